"""Training on a folder whose masks hold more classes than background and lung (``classes``)."""
import json
import re

import pytest

pytest.importorskip("PIL")
pytest.importorskip("yaml")

from refmatch.data.phantoms import CLASS_NAMES, make_phantom  # noqa: E402
from refmatch.recipes.config import load_config  # noqa: E402
from test_recipes import TINY  # noqa: E402

FOLDER_RUN = [item for item in TINY if not item.startswith(("data=", "num_phantoms="))] + ["steps=2"]


@pytest.fixture
def phantom_folder(tmp_path):
    """12 phantoms as a folder: masks hold the four phantom classes 0..3."""
    from PIL import Image

    root = tmp_path / "data"
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(root / "images" / f"p{i:02d}.png")
        Image.fromarray(mask.byte().numpy()).save(root / "masks" / f"p{i:02d}.png")
    return root


def classes_setting(names):
    return "classes=[" + ", ".join(names) + "]"


def test_a_folder_trains_the_classes_it_names(tmp_path, phantom_folder):
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=refmatch", classes_setting(CLASS_NAMES),
          "--out", str(run)])
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert set(test["dice"]) == set(CLASS_NAMES)
    validation = [line for line in (run / "train.log").read_text().splitlines() if "mean_dice" in line]
    assert validation and all(re.search("; Dice " + ", ".join(fr"{name} [\d.na]+" for name in CLASS_NAMES[1:]) + "$",
                                        line) for line in validation), "each class's Dice on the validation lines"
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", str(phantom_folder), "--split", "all",
          "--out", str(tmp_path / "all.json")])
    assert set(json.loads((tmp_path / "all.json").read_text())["dice"]) == set(CLASS_NAMES)
    main(["evaluate", "--checkpoint", str(run / "best.pt"), "--out", str(tmp_path / "test.json")])  # its own data
    assert json.loads((tmp_path / "test.json").read_text())["mean_dice"] == pytest.approx(
        test["mean_dice"], abs=1e-6)
    import torch

    older = torch.load(run / "best.pt", weights_only=False)  # a run that saved its data folder relative
    older["config"]["data"] = "data/folder"
    torch.save(older, tmp_path / "older.pt")
    with pytest.raises(ValueError, match="saved its data folder as data/folder, relative to where it trained"):
        main(["evaluate", "--checkpoint", str(tmp_path / "older.pt")])
    phantom_folder.rename(tmp_path / "moved")
    with pytest.raises(FileNotFoundError, match=f"the run's data folder {phantom_folder} is gone: name where"):
        main(["evaluate", "--checkpoint", str(run / "best.pt")])


def test_a_mask_with_more_classes_than_named_is_refused_by_name(tmp_path, phantom_folder):
    from refmatch.__main__ import main

    with pytest.raises(ValueError, match=r"p\d\d\.png holds label\(s\) 3, but the config \(classes\) has 3 classes"):
        main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=supervised",
              classes_setting(["background", "lung", "heart"]), "--out", str(tmp_path / "run")])


@pytest.mark.parametrize("classes, message", [
    ("[lung]", "classes must be 2 to 255 different, non-empty, printable names"),
    ("[background, lung, lung]", "classes must be 2 to 255 different"),
    ("[background, '']", "non-empty, printable names"),
    ("[background, 3]", "non-empty, printable names"),
    ('[background, "lung\\necho planted #"]', "printable names"),  # a line of its own in train.log
    ("background", "classes must be list"),
])
def test_bad_classes_are_refused(tmp_path, classes, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [f"data={tmp_path}", f"classes={classes}"])


def test_phantoms_keep_their_own_classes():
    with pytest.raises(ValueError, match="phantoms have their own"):
        load_config(None, ["data=phantom", "classes=[background, lung]"])
    assert load_config(None, ["data=phantom"]).classes == []


def test_dark_16_bit_images_are_named_by_every_command(tmp_path, phantom_folder):
    """12-bit data in 16-bit PNGs reads at most 1/16 of the range: the run says so in train.log
    (Python warnings go to the log while a run lasts, and no longer after it), and so do the
    commands that read images with a trained model, where data stored otherwise than for
    training gave a lung Dice of 0.40 instead of 0.94 without a word. Per image: a rescaled
    file does not hide the others; a blank (constant) one is not named."""
    import warnings

    import numpy as np
    from PIL import Image

    from refmatch.__main__ import main

    shown = warnings.showwarning
    for path in (phantom_folder / "images").iterdir():
        twelve_bit = np.array(Image.open(path)).astype(np.uint16) * 16  # 0..4080 of 65535
        Image.fromarray(twelve_bit).save(path)
    bright = phantom_folder / "images" / "p11.png"
    Image.fromarray((np.array(Image.open(bright)) * 16).astype(np.uint16)).save(bright)  # rescaled
    Image.fromarray(np.full((32, 32), 7, dtype=np.uint16)).save(phantom_folder / "images" / "p10.png")  # blank
    run = tmp_path / "run"
    main(["train", *FOLDER_RUN, f"data={phantom_folder}", classes_setting(CLASS_NAMES), "--out", str(run)])
    log = (run / "train.log").read_text()
    assert f"UserWarning: 10 image(s) of {phantom_folder} stay below 0.125 of their bit depth's range (" in log
    assert "12-bit data in 16-bit PNGs?" in log and "p11.png" not in log and "p10.png" not in log
    assert warnings.showwarning is shown
    checkpoint = str(run / "best.pt")
    for resolution in ("training", "native"):
        with pytest.warns(UserWarning, match=r"10 image\(s\) of .*data.images stay below 0.125 .*p00.png"):
            main(["evaluate", "--checkpoint", checkpoint, "--data", str(phantom_folder), "--split", "all",
                  "--resolution", resolution])
    with pytest.warns(UserWarning) as caught:
        main(["pseudo-label", "--checkpoint", checkpoint, "--labeled", str(phantom_folder),
              "--unlabeled", str(phantom_folder / "images"), "--out", str(tmp_path / "labels")])
    messages = [str(warning.message) for warning in caught if "bit depth" in str(warning.message)]
    assert len(messages) == 2 and messages[0].startswith("10 image(s) of ")  # labelled, then the first batch of 2
    assert messages[1].startswith(f"2 image(s) of {phantom_folder / 'images'} (the first found)")


def test_a_class_no_mask_holds_is_named_and_phantoms_refuse_its_model(tmp_path, phantom_folder):
    """A fifth name (a typo, or a class the split left out) trained without a word, and its
    model met the phantoms' 4 classes only after generating them, as a label error."""
    from refmatch.__main__ import main

    run = tmp_path / "run"
    main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=supervised",
          classes_setting([*CLASS_NAMES, "nodule"]), "--out", str(run)])
    assert "class(es) 'nodule' (4) appear in no mask of " in \
        (run / "train.log").read_text()
    with pytest.raises(ValueError, match=r"best.pt predicts 5 classes, phantoms have 4 \(background, lung"):
        main(["evaluate", "--checkpoint", str(run / "best.pt"), "--data", "phantom", "--split", "all"])


def test_a_binary_mask_among_class_indices_is_named(tmp_path, phantom_folder):
    """With more than two classes 255 marks ignored pixels: a 0/255 mask lost its foreground
    in silence."""
    import numpy as np
    from PIL import Image

    from refmatch.__main__ import main

    mask = phantom_folder / "masks" / "p03.png"
    Image.fromarray(np.where(np.array(Image.open(mask)) > 0, 255, 0).astype(np.uint8)).save(mask)
    run = tmp_path / "run"
    main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=supervised", classes_setting(CLASS_NAMES),
          "--out", str(run)])
    assert "1 mask(s) of " in (run / "train.log").read_text()
    assert "hold only 0 and 255 (p03.png): with 4 classes 255 marks ignored pixels" in (run / "train.log").read_text()


def test_a_binary_folder_is_refused_where_the_config_names_more_classes(tmp_path, phantom_folder):
    """Every mask 0/255 with three classes named: train warned, then learnt from background and
    ignored pixels alone (test Dice 0); evaluate and pseudo-label refused the same folder."""
    import numpy as np
    from PIL import Image

    from refmatch.__main__ import main

    for mask in (phantom_folder / "masks").iterdir():
        Image.fromarray(np.where(np.array(Image.open(mask)) > 0, 255, 0).astype(np.uint8)).save(mask)
    with pytest.raises(ValueError, match=r"every mask in .*data holds only 0 and 255: a binary folder, but the "
                                         r"config \(classes\) has 3 classes, .*; name two classes for a binary"):
        main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=supervised",
              classes_setting(CLASS_NAMES[:3]), "--out", str(tmp_path / "run")])


def test_class_indices_beyond_the_named_classes_say_which_setting_to_change(tmp_path, phantom_folder):
    """Masks of 0..3 and 255 under the default two classes read as grey levels of a 0/255
    mask, with advice to store class indices, which they were."""
    import numpy as np
    from PIL import Image

    from refmatch.__main__ import main

    for mask in (phantom_folder / "masks").iterdir():
        indices = np.array(Image.open(mask))
        indices[:2] = 255
        Image.fromarray(indices).save(mask)
    with pytest.raises(ValueError, match=r"p\d\d.png holds label\(s\) 2, 3, but the config \(classes\) has 2 classes "
                                         r"\(.*\); name the masks' classes in order in the config's classes$"):
        main(["train", *FOLDER_RUN, f"data={phantom_folder}", "method=supervised", "--out", str(tmp_path / "run")])
    from refmatch.data.folder import read_mask

    with pytest.raises(ValueError, match=r"p00.png holds class indices 0, .* and 255 \(ignored\): without "
                                         r"num_classes, .* reads as two classes; pass num_classes$"):
        read_mask(phantom_folder / "masks" / "p00.png")


def test_a_pseudo_label_method_without_unlabelled_images_is_refused(tmp_path, phantom_folder):
    """All images labelled and no unlabeled/: refmatch trained as supervised, under its own name."""
    from refmatch.__main__ import main

    with pytest.raises(ValueError, match=r"method=refmatch learns from unlabelled images, but .*data leaves none "
                                         r"\(labeled_fraction=1.0, num_labeled=0; unlabeled/ empty or missing\)"):
        main(["train", *FOLDER_RUN, f"data={phantom_folder}", classes_setting(CLASS_NAMES), "labeled_fraction=1.0",
              "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def split_of(*masks):
    import torch

    from refmatch.recipes.data_setup import Split

    masks = torch.tensor(masks)
    return Split(torch.zeros(len(masks), 1, *masks.shape[1:]), masks, [f"m{i}.png" for i in range(len(masks))])


def test_masks_are_checked_against_the_labelled_split():
    """A class that only unlabelled, val or test masks hold is never learnt (and refmatch's bank
    has no reference of it); labelled masks with no class pixel at all leave nothing to learn."""
    import warnings

    from refmatch.recipes.data_setup import check_masks

    names = ("background", "right", "left")
    labeled, others = split_of([[0, 1], [1, 255]]), split_of([[0, 2]], [[2, 1]])
    with pytest.warns(UserWarning, match=r"class\(es\) 'left' \(2\) appear in none of the 1 labelled masks of this "
                                         r"run's split of DATA, only in other splits"):
        check_masks([labeled, others], names, "DATA")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_masks([split_of([[0, 1], [2, 255]]), others], names, "DATA")  # every class labelled: no word
    with pytest.warns(UserWarning) as caught:
        check_masks([labeled], names, "DATA")  # absent everywhere: that warning alone
    assert [str(w.message)[:46] for w in caught] == ["class(es) 'left' (2) appear in no mask of DATA"]
    with pytest.raises(ValueError, match=r"the 2 labelled mask\(s\) of DATA \(m0.png, m1.png\) hold no class pixel: "
                                         r"every pixel is 255 \(ignored\)"):
        check_masks([split_of([[255, 255]], [[255, 255]]), others], names, "DATA")


def test_dark_images_are_named_by_their_brightest_pixel():
    """A dim image with a small bright structure (fluorescence, an end slice with a little
    tissue) is an ordinary 8-bit image; 12-bit data in 16 bits tops out at 1/16."""
    import torch

    from refmatch.recipes.data_setup import dark_images

    images = torch.full((4, 1, 16, 16), 0.02)
    images[0, 0, 4, 4] = 1.0  # one bright pixel of 256: a 99th percentile would call the image dark
    images[1] *= torch.linspace(0, 3, 16)  # 12-bit: at most 0.06
    images[3, 0, 0, 0] = 0.124
    assert dark_images(images, ["cell", "twelve bit", "blank", "dim"]) == ["twelve bit", "dim"]


def test_a_run_never_writes_into_a_dataset_folder(tmp_path, phantom_folder):
    """--out at the data folder wrote the run's grids into its images/, and --overwrite then
    deleted images/ as a run's output: 40 training images gone."""
    from refmatch.__main__ import main

    images = sorted(path.name for path in (phantom_folder / "images").iterdir())
    settings = [*FOLDER_RUN, f"data={phantom_folder}", classes_setting(CLASS_NAMES)]
    with pytest.raises(ValueError, match=r"--out .*data holds masks/: a dataset folder, whose images/ a run would"):
        main(["train", *settings, "--out", str(phantom_folder), "--overwrite"])
    with pytest.raises(ValueError, match=r"--out .*data.images.run lies in the data's image folders"):
        main(["train", *settings, "--out", str(phantom_folder / "images" / "run")])
    assert sorted(path.name for path in (phantom_folder / "images").iterdir()) == images
    with pytest.raises(ValueError, match="holds masks/: a dataset folder"):  # any dataset, not only the run's
        main(["train", *FOLDER_RUN, "method=supervised", "--out", str(phantom_folder)])
    scans = tmp_path / "scans"  # images/ alone: an unlabelled folder, which pseudo-label reads
    (scans / "images").mkdir(parents=True)
    (scans / "images" / "scan0.png").write_bytes(b"")
    (scans / "images" / "step_000002.png").write_bytes(b"")  # a run's grid does not count, nor a viewer's file
    (scans / "images" / ".DS_Store").write_bytes(b"")
    with pytest.raises(ValueError, match=r"holds images/ with images a run does not write \(scan0.png, ...\)"):
        main(["train", *FOLDER_RUN, "method=supervised", "--out", str(scans), "--overwrite"])
    assert sorted(path.name for path in (scans / "images").iterdir()) == [".DS_Store", "scan0.png", "step_000002.png"]
