"""A two-class model's pseudo-label file that kept no foreground pixel holds only 0 and 255, which
every mask reader takes for a 0/255 binary mask (its ignored pixels the class): named and recorded."""
import json

import pytest

pytest.importorskip("yaml", reason="the train extra is not installed")
pytest.importorskip("PIL", reason="the train extra is not installed")

from PIL import Image  # noqa: E402

from refmatch.__main__ import main  # noqa: E402
from refmatch.data.phantoms import make_phantom  # noqa: E402
from refmatch.recipes import methods, pseudo_label  # noqa: E402
from test_pseudo_label_command import TINY  # noqa: E402


def test_files_that_read_as_binary_masks_are_named(tmp_path, monkeypatch):
    for folder in ("data/images", "data/masks", "unlabeled"):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(12):  # lung (phantom class 1) against the rest
        image, mask = make_phantom(i, size=32)
        Image.fromarray((255 * image[0]).byte().numpy()).save(tmp_path / "data" / "images" / f"p{i}.png")
        Image.fromarray((mask == 1).byte().numpy()).save(tmp_path / "data" / "masks" / f"p{i}.png")
    for i in range(2):
        Image.fromarray((255 * make_phantom(20 + i, size=32)[0][0]).byte().numpy()).save(tmp_path / "unlabeled" /
                                                                                         f"u{i}.png")
    settings = [item for item in TINY if not item.startswith(("data=", "num_phantoms=", "labeled_fraction="))]
    main(["train", *settings, f"data={tmp_path / 'data'}", "num_labeled=3", "--out", str(tmp_path / "run")])
    labelled = methods.ReferencePseudoLabels.__call__

    def no_lung_in_the_first(self, images):  # as a strict threshold would leave an image
        result = labelled(self, images)
        result.labels[0][result.labels[0] == 1] = methods.IGNORE
        result.labels[0][0, 0] = methods.IGNORE
        return result
    monkeypatch.setattr(methods.ReferencePseudoLabels, "__call__", no_lung_in_the_first)
    out = tmp_path / "pseudo"
    with pytest.warns(UserWarning, match=r"1 labels/ file\(s\) hold only 0 and 255 \(no lung pixel kept; u0.png\)"):
        main(["pseudo-label", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--labeled",
              str(tmp_path / "data"), "--unlabeled", str(tmp_path / "unlabeled"), "--out", str(out)])
    assert json.loads((out / pseudo_label.RECORD).read_text())["read_as_binary_masks"] == ["u0.png"]


def test_a_resumed_folder_of_an_older_refmatch_has_its_files_read(tmp_path):
    """Its record has no read_as_binary_masks: the finished images' files are read instead."""
    import numpy as np

    (tmp_path / "labels").mkdir()
    for name, values in (("u0.png", [0, 255]), ("u1.png", [0, 1]), ("u2.png", [0, 255])):
        Image.fromarray(np.array([values], dtype=np.uint8)).save(tmp_path / "labels" / name)
    done = {"u0.png", "u1.png"}
    assert pseudo_label._binary_before(tmp_path, {}, done, 2) == ["u0.png"]
    assert pseudo_label._binary_before(tmp_path, {"read_as_binary_masks": ["u2.png"]}, done, 2) == []
    assert pseudo_label._binary_before(tmp_path, {}, done, 3) == []  # 255 is "ignored" to a 3-class reader
