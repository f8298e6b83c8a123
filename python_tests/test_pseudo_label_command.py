"""``refmatch pseudo-label``: files at each image's size, streamed batches, a record of how far
a folder got, --resume after a stop, and an occupied folder refused without --resume or
--overwrite."""
import json

import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from PIL import Image  # noqa: E402

from refmatch import ReferenceBank  # noqa: E402
from refmatch.__main__ import main  # noqa: E402
from refmatch.data.folder import FolderDataset  # noqa: E402
from refmatch.data.phantoms import make_phantom  # noqa: E402
from refmatch.recipes import pseudo_label  # noqa: E402

TINY = ["data=phantom", "num_phantoms=24", "image_size=32", "width=4", "depth=3", "tap_size=16", "batch_size=2",
        "unlabeled_batch_size=2", "bank_capacity=512", "bank_refresh_every=2", "eval_every=2", "image_every=2",
        "rampup_steps=2", "num_workers=0", "labeled_fraction=0.2", "method=refmatch", "steps=2"]
NAMES = ["u0.png", "u1.png", "u2.png"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """(a trained run's best.pt, labelled folder, unlabelled folder of 40 x 48 images: not the model's 32 x 32)."""
    root = tmp_path_factory.mktemp("pseudo_label")
    main(["train", *TINY, "--out", str(root / "run")])
    labeled, unlabeled = root / "labeled", root / "unlabeled"
    for folder in (labeled / "images", labeled / "masks", unlabeled):
        folder.mkdir(parents=True)
    for i in range(3):
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(labeled / "images" / f"p{i}.png")
        Image.fromarray(mask.byte().numpy()).save(labeled / "masks" / f"p{i}.png")
        unlabeled_image = Image.fromarray((255 * make_phantom(10 + i, size=32)[0][0]).byte().numpy())
        unlabeled_image.resize((40, 48)).save(unlabeled / NAMES[i])
    return root / "run" / "best.pt", labeled, unlabeled


def command(folders, out, *flags, checkpoint=None):
    best, labeled, unlabeled = folders
    return ["pseudo-label", "--checkpoint", str(checkpoint or best), "--labeled", str(labeled),
            "--unlabeled", str(unlabeled), "--out", str(out), *flags]


def record(out):
    return json.loads((out / pseudo_label.RECORD).read_text())


def test_files_at_each_images_size_written_batch_by_batch(folders, tmp_path, monkeypatch, capfd):
    """The second batch's image is read after the first batch's files are written: the images
    stream through (a folder of 100k radiographs no longer loads whole first)."""
    events, read, save = [], FolderDataset.__getitem__, pseudo_label.save_pseudo_label
    monkeypatch.setattr(FolderDataset, "__getitem__", lambda self, i: events.append(("read", self.names[i]))
                        or read(self, i))
    monkeypatch.setattr(pseudo_label, "save_pseudo_label", lambda path, *rest: events.append(("save", path.name))
                        or save(path, *rest))
    out, records, write = tmp_path / "pseudo", [], pseudo_label.write_text_atomic
    monkeypatch.setattr(pseudo_label, "RECORD_SECONDS", 0)  # the record after every batch: kill -9 keeps it
    monkeypatch.setattr(pseudo_label, "write_text_atomic", lambda path, text: records.append(
        json.loads(text)["written"]) or write(path, text))
    main(command(folders, out))
    assert records == [0, 2, 3, 3]  # before the first image, after each batch of 2, at the end
    for sub in pseudo_label.OUTPUTS:
        assert sorted(p.name for p in (out / sub).iterdir()) == NAMES
        for path in (out / sub).iterdir():
            with Image.open(path) as written:
                assert written.size == (40, 48), "written at the input's size"
    assert record(out)["complete"] and record(out)["written"] == record(out)["images"] == 3
    # how the folder was labelled: the model's classes, the run's settings, what confidence/ holds
    assert record(out)["classes"][:2] == ["background", "lung"] and record(out)["settings"]["pl_mode"] == "soft"
    assert record(out)["confidence"].startswith("margin between the two most probable classes")
    assert isinstance(record(out)["seed"], int) and record(out)["environment"]["device"].startswith("cpu (")
    unlabeled_events = [event for event in events if event[1] in NAMES]
    assert unlabeled_events.index(("save", "u0.png")) < unlabeled_events.index(("read", "u2.png"))
    assert "\npseudo-label: 2/3 images, " in capfd.readouterr().err  # no terminal here: progress lines


@pytest.mark.parametrize("stop, advice", [(KeyboardInterrupt, "; add --resume"),
                                          (ValueError, "; fix what the error names, then add --resume")])
def test_a_stopped_folder_resumes_where_it_stopped(folders, tmp_path, monkeypatch, capsys, stop, advice):
    """A stop, or an error such as a damaged image (which a plain --resume would meet again)."""
    out, saved, calls = tmp_path / "pseudo", pseudo_label.save_pseudo_label, []

    def save_then_stop(path, *rest):
        calls.append(path.name)
        if len(calls) == 2:
            raise stop
        saved(path, *rest)

    monkeypatch.setattr(pseudo_label, "save_pseudo_label", save_then_stop)
    with pytest.raises(stop):
        main(command(folders, out))
    assert f"stopped after 1 of 3 images: {out} is incomplete (pseudo-label.json says so){advice} to the command" \
        in capsys.readouterr().err
    assert not record(out)["complete"] and record(out)["written"] == 1
    calls.clear()
    monkeypatch.setattr(pseudo_label, "save_pseudo_label", lambda path, *rest: calls.append(path.name) or
                        saved(path, *rest))
    for sub in pseudo_label.OUTPUTS:  # as a kill in the middle of a write leaves them
        (out / sub / ".u1.png.k2j3h4x_.tmp").write_bytes(b"half a PNG")
    main(command(folders, out, "--resume"))
    assert calls == ["u1.png", "u2.png"], "the finished image is not labelled again"
    assert not list(out.glob("*/.*.tmp")), "the temporaries neither block a resume nor stay"
    done = record(out)
    assert done["complete"] and done["written"] == 3 and done["kept_counted"] == 3
    assert 0 < done["kept_percent"] <= 100
    main(command(folders, out, "--resume"))
    assert "is complete: 3 images, nothing to do" in capsys.readouterr().out


def test_a_folder_that_another_pseudo_label_holds_is_refused(folders, tmp_path):
    from refmatch.recipes.run_lock import RunFolderLock

    (tmp_path / "pseudo").mkdir()
    holder = RunFolderLock(tmp_path / "pseudo")
    try:
        with pytest.raises(BlockingIOError, match="is held by a run in this process that was not closed"):
            main(command(folders, tmp_path / "pseudo"))
    finally:
        holder.release()


def test_a_read_only_file_system_is_named_as_the_folder_that_cannot_be_written(folders, tmp_path, monkeypatch):
    """Only PermissionError was reworded: a read-only file system gave '[Errno 30] ...: OUT'."""
    import errno

    from refmatch.recipes import run_lock

    def read_only(folder, made, written_in_place):
        raise OSError(errno.EROFS, "Read-only file system", str(folder))
    monkeypatch.setattr(run_lock, "take_lock", read_only)
    with pytest.raises(PermissionError, match=r"^cannot write into .*pseudo: Read-only file system$"):
        main(command(folders, tmp_path / "pseudo"))


def test_an_occupied_folder_takes_resume_or_overwrite(folders, tmp_path, capsys):
    out = tmp_path / "pseudo"
    main(command(folders, out))
    with pytest.raises(FileExistsError, match="holds pseudo-labels: finish them with --resume, or start over with "
                                              "--overwrite"):
        main(command(folders, out))
    stale = out / "labels" / "gone.png"  # from an earlier, other folder of images
    stale.write_bytes(b"")
    main(command(folders, out, "--overwrite"))
    assert not stale.exists() and record(out)["complete"]
    other = tmp_path / "other.pt"
    other.write_bytes(folders[0].read_bytes())
    with pytest.raises(ValueError, match=r"--resume: .* labelled with another checkpoint \(.*best.pt\): pass the same"):
        main(command(folders, out, "--resume", checkpoint=other))  # another path: not "its size or time changed"
    with pytest.raises(FileNotFoundError, match="--resume: .*pseudo-label.json not found"):
        main(command(folders, tmp_path / "new", "--resume"))
    with pytest.raises(SystemExit) as stopped:
        main(command(folders, out, "--resume", "--overwrite"))
    assert stopped.value.code == 2 and "--resume and --overwrite exclude each other" in capsys.readouterr().err


def test_overwrite_deletes_nothing_before_the_new_run_has_loaded(folders, tmp_path):
    """A mistyped --checkpoint with --overwrite deleted the earlier pseudo-labels; a labels/ folder
    that refmatch did not write (a dataset's own annotations) is never taken for them."""
    out = tmp_path / "pseudo"
    main(command(folders, out))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        main(command(folders, out, "--overwrite", checkpoint=tmp_path / "typo.pt"))
    assert sorted(p.name for p in (out / "labels").iterdir()) == NAMES and record(out)["complete"]
    annotations = tmp_path / "dataset"
    (annotations / "labels").mkdir(parents=True)
    (annotations / "labels" / "case1.txt").write_text("the user's own")
    for flags in ((), ("--overwrite",)):
        with pytest.raises(FileExistsError, match="holds labels that refmatch pseudo-label did not write"):
            main(command(folders, annotations, *flags))
    assert (annotations / "labels" / "case1.txt").exists()


def test_resume_knows_its_sources_by_path_and_checkpoint_file(folders, tmp_path, monkeypatch, capsys):
    """Relative and absolute names of the same folders resume; a best.pt trained on since, or a
    renamed image, does not pass for the folder's own."""
    import os
    import shutil

    best, labeled, unlabeled = folders
    images = tmp_path / "images"
    shutil.copytree(unlabeled, images)
    out = tmp_path / "pseudo"
    main(command((best, labeled, images), out))
    monkeypatch.chdir(tmp_path)
    main(command((os.path.relpath(best), os.path.relpath(labeled), "images"), "pseudo", "--resume"))
    assert "is complete: 3 images, nothing to do" in capsys.readouterr().out
    shutil.copy(images / "u2.png", images / "u9.png")  # a new image: labelled by the resume
    main(command((best, labeled, images), out, "--resume"))
    assert (out / "labels" / "u9.png").is_file() and record(out)["complete"] and record(out)["images"] == 4
    (images / "u2.png").unlink()  # an image gone since: its labels would stay behind
    with pytest.raises(ValueError, match="labels holds 1 file.s. of images no longer in .*images .e.g. u2.png.: "
                                         "--overwrite"):
        main(command((best, labeled, images), out, "--resume"))
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*moved.pt"):
        main(command((tmp_path / "moved.pt", labeled, images), out, "--resume"))
    checkpoint = tmp_path / "best.pt"
    shutil.copy2(best, checkpoint)
    main(command((checkpoint, labeled, images), tmp_path / "second"))
    os.utime(checkpoint, ns=(0, 0))  # as if trained on and saved again
    with pytest.raises(ValueError, match=r"another checkpoint file \(its size or time changed since"):
        main(command((checkpoint, labeled, images), tmp_path / "second", "--resume"))


def test_a_resumed_record_of_an_older_refmatch_counts_only_what_it_can(folders, tmp_path):
    """A stopped folder of an older refmatch records no kept share: the resumed one averages only
    the images it labels (it averaged in a share of 0 for the earlier ones)."""
    out = tmp_path / "pseudo"
    main(command(folders, out))
    for name in NAMES[1:]:
        (out / "labels" / name).unlink()
    older = {key: record(out)[key] for key in ("checkpoint", "labeled", "unlabeled", "images")}
    (out / pseudo_label.RECORD).write_text(json.dumps({**older, "written": 1, "complete": False}))
    main(command(folders, out, "--resume"))
    assert record(out)["kept_counted"] == 2 and record(out)["kept_percent"] == pytest.approx(100.0)


def test_a_dataset_folder_with_images_and_unlabeled_is_refused_as_unlabeled(folders, tmp_path):
    """It labelled images/, the labelled images, where the user meant unlabeled/."""
    best, labeled, unlabeled = folders
    (labeled / "unlabeled").mkdir(exist_ok=True)
    try:
        with pytest.raises(ValueError, match=r"--unlabeled .*labeled holds both images/ and unlabeled/: name the "
                                             r"folder to label \(.*labeled.unlabeled for its unlabelled images\)"):
            main(command((best, labeled, labeled), tmp_path / "pseudo"))
    finally:
        (labeled / "unlabeled").rmdir()
    main(command((best, labeled, labeled), tmp_path / "pseudo"))  # images/ alone: those
    assert sorted(path.name for path in (tmp_path / "pseudo" / "labels").iterdir()) == ["p0.png", "p1.png", "p2.png"]


def test_the_bank_can_keep_other_pixels_than_the_run_did(folders, tmp_path, monkeypatch, capsys):
    """A run trained with a ring bank (the lung config's) kept only the last labelled images'
    pixels of a larger --labeled folder, and warned of a setting the command could not change."""
    from refmatch.recipes import methods

    built = []
    monkeypatch.setattr(methods, "ReferenceBank", lambda *args, **kwargs: built.append((args, kwargs))
                        or ReferenceBank(*args, **kwargs))
    out = tmp_path / "pseudo"
    with pytest.warns(UserWarning, match="policy='ring' keeps the batch's last 7"):  # 16 x 16 tap, 2 images
        main(command(folders, out, "--bank-capacity", "7", "--bank-policy", "ring"))
    (_, _, capacity), settings = built[-1]
    assert capacity == 7 and settings["policy"] == "ring" and record(out)["complete"]
    assert "(bank: ring, 7 pixels per class)" in capsys.readouterr().err
    (out / "labels" / NAMES[0]).unlink()
    with pytest.raises(ValueError, match=r"labelled with a bank of --bank-capacity 7, --bank-policy ring: pass "):
        main(command(folders, out, "--resume"))
    with pytest.warns(UserWarning, match="policy='ring'"):
        main(command(folders, out, "--resume", "--bank-capacity", "7", "--bank-policy", "ring"))  # the same
    assert (out / "labels" / NAMES[0]).is_file()
    with pytest.raises(ValueError, match=r"labelled with a bank of --bank-capacity 7: pass "):  # complete: said done
        main(command(folders, out, "--resume", "--bank-capacity", "5"))
    main(command(folders, tmp_path / "default"))
    assert built[-1][0][2] == 512 and built[-1][1]["policy"] == "reservoir"  # the run's (TINY, the default)
    (tmp_path / "default" / "labels" / NAMES[0]).unlink()
    main(command(folders, tmp_path / "default", "--resume", "--bank-policy", "reservoir"))  # the run's own: as used
    assert (tmp_path / "default" / "labels" / NAMES[0]).is_file()
    with pytest.raises(SystemExit):
        main(command(folders, tmp_path / "bad", "--bank-capacity", "0"))
