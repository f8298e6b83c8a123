"""The README's Usage example runs as written (its training-loop block is a sketch with the
user's own model and data, so it is not run); its experiment summary and docs/experiments.md's
five-seed tables agree with their seeds; the defaults it lists are the code's."""
import importlib.util
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
EXPERIMENTS = README.parent / "docs" / "experiments.md"


def plot_seed_tables_module():
    spec = importlib.util.spec_from_file_location("plot_seed_tables", README.parent / "scripts" / "plot_seed_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_cells(line):
    """A Markdown table row's cells, without their bold marks."""
    return [cell.strip().strip("*") for cell in line.strip("|").split("|")]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_usage_example_runs_and_its_shapes_hold():
    usage = next(block for block in python_blocks() if block.startswith("import torch\nimport refmatch\n"))
    scope = {}
    exec(compile(usage, str(README), "exec"), scope)
    assert scope["pseudo_labels"].shape == (8, 32, 32) and scope["similarity"].shape == (8, 32, 32)
    assert scope["top5"].index.shape == (8, 5, 32, 32)
    assert scope["per_class"].shape == (8, 4, 32, 32) and scope["soft"].probabilities.shape == (8, 4, 32, 32)


def test_the_volume_example_runs_and_its_shapes_hold():
    volumes = next(block for block in python_blocks() if "nn.Conv3d" in block)
    scope = {}
    exec(compile(volumes, str(README), "exec"), scope)
    assert scope["labels"].shape == scope["confidence"].shape == (1, 8, 32, 32)
    assert scope["bank"].counts.sum() == 2 * 8 * 32 * 32 and 0 < scope["kept_fraction"] <= 1


def test_the_vit_example_runs_and_its_shapes_hold():
    """The block with a stand-in ViT-S/14: patch embedding, class token, 12 blocks."""
    import torch
    from torch import nn

    import refmatch

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed, self.cls_token = nn.Conv2d(3, 384, 14, stride=14), nn.Parameter(torch.zeros(1, 1, 384))
            self.blocks = nn.Sequential(*(nn.Identity() for _ in range(12)))

        def forward(self, images):
            patches = self.patch_embed(images).flatten(2).transpose(1, 2)
            return self.blocks(torch.cat([self.cls_token.expand(len(images), -1, -1), patches], dim=1))

    block = next(block for block in python_blocks() if "tokens_as_maps" in block)
    scope = {"refmatch": refmatch, "vit": ViT(), "images": torch.randn(2, 3, 224, 224),
             "bank": refmatch.ReferenceBank(384, 2, capacity_per_class=1024),
             "masks": torch.randint(0, 2, (2, 224, 224))}
    with torch.no_grad():
        exec(compile(block, str(README), "exec"), scope)
    assert scope["tap"].features().shape == (2, 384, 16, 16) and len(scope["bank"]) > 0


def test_volumes_go_in_flattened_as_the_contract_says():
    """[B, D, Z, H, W] volumes as [B, D, Z*H, W] maps (a view), results unflattened back: the same
    matches as each slice on its own, for contiguous and channels-last-3d volumes."""
    import torch

    import refmatch

    reference, labels = torch.randn(60, 16), torch.randint(0, 3, (60,))
    for volume in (torch.randn(2, 16, 3, 5, 7), torch.randn(2, 16, 3, 5, 7).to(memory_format=torch.channels_last_3d)):
        maps = volume.flatten(2, 3)
        assert maps._base is volume, "a view, not a copy"
        labelled = refmatch.match(maps, reference, labels, k=4).label.unflatten(-2, (3, 5))
        for z in range(3):
            assert torch.equal(labelled[:, :, z], refmatch.match(volume[:, :, z], reference, labels, k=4).label)


@pytest.mark.parametrize("which, picture, names", [
    ("labelled images, instance norm", "lung_experiment.png",
     ["6 labelled images, instance norm", "6 labelled images, instance norm, EMA warm-up",
      "28 labelled images, instance norm", "28 labelled images, instance norm, EMA warm-up"]),
    ("labelled images, BatchNorm", "lung_experiment_batchnorm.png",
     ["28 labelled images, BatchNorm", "6 labelled images, BatchNorm"]),
    ("labelled phantoms", "phantom_seeds.png", ["6 labelled phantoms, BatchNorm",
                                                "6 labelled phantoms, BatchNorm, statistics averaged",
                                                "6 labelled phantoms, instance norm",
                                                "6 labelled phantoms, BatchNorm, EMA warm-up",
                                                "6 labelled phantoms, instance norm, EMA warm-up",
                                                "6 labelled phantoms, 2400 steps"]),
    ("right and left lung", "lung_sides.png",
     ["right and left lung, 28 labelled images", "right and left lung, 6 labelled images"]),
])
def test_seed_tables_means_and_pictures_agree_with_their_seeds(tmp_path, which, picture, names):
    """docs/experiments.md's per-seed tables: each row's mean Dice column is the mean of its
    seeds, and scripts/plot_seed_tables.py reads every row (4 methods x 5 seeds; 3 seeds for the
    right and left lung) and draws them; the README or docs/experiments.md shows the committed
    picture."""
    plot_seed_tables = plot_seed_tables_module()
    text = EXPERIMENTS.read_text()
    tables = plot_seed_tables.seed_tables(text, which)
    assert list(tables) == names
    count = 3 if which == "right and left lung" else 5
    for name, (seeds, rows) in tables.items():
        assert seeds == list(range(count)) and len(rows) == 4
        block = text.split(f"| {name} | seed 0 |", 1)[1].split("\n\n", 1)[0]
        for line in block.splitlines()[2:]:  # past the header's rest and the rule
            cells = table_cells(line)
            values = rows[re.sub(r"[`*]", "", cells[0])]
            assert len(values) == count and all(0 < value < 1 for value in values), (name, cells[0])
            assert abs(float(cells[1 + count]) - sum(values) / count) <= 5.1e-5, (name, cells[0], cells[1 + count])
    assert (README.parent / "docs" / picture).is_file()
    assert f"](docs/{picture})" in README.read_text() or f"]({picture})" in text
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    assert plot_seed_tables.plot(tables, tmp_path / picture).stat().st_size > 10_000


def test_the_readme_summary_is_the_mean_of_the_instance_norm_seed_tables():
    """Each cell of the README's experiment summary (supervised, mean teacher, refmatch, all labels)
    is the mean of the matching row of docs/experiments.md's five-seed table."""
    tables = plot_seed_tables_module().seed_tables(EXPERIMENTS.read_text(), "instance norm")
    sources = {"lung X-rays, 28 labelled (EMA warm-up, session 31)": "28 labelled images, instance norm, EMA warm-up",
               "lung X-rays, 6 labelled (EMA warm-up, session 30)": "6 labelled images, instance norm, EMA warm-up",
               "chest phantoms, 6 labelled (the main job, EMA warm-up, session 29)":
                   "6 labelled phantoms, instance norm, EMA warm-up"}
    summary = README.read_text().split("| mean test Dice over five seeds |", 1)[1].split("\n\n", 1)[0]
    rows = summary.splitlines()[2:]  # past the header's rest and the rule
    assert [line.split("|")[1].strip() for line in rows] == list(sources)
    for line in rows:
        cells = table_cells(line)
        _, methods = tables[sources[cells[0]]]
        means = [sum(values) / len(values) for values in methods.values()]
        assert [float(cell) for cell in cells[1:]] == pytest.approx(means, abs=5.1e-5), cells[0]


def test_compare_pseudo_labels_defaults_are_the_docs():
    """The plain pseudo-label defaults a compared setting starts from, as docs/training.md lists them."""
    from refmatch.recipes.compare_pseudo_labels import PLAIN_PSEUDO_LABELS

    text = " ".join((README.parent / "docs" / "training.md").read_text().split())
    stated = re.search(r"plain pseudo-label defaults \(`([^`]*)`", text).group(1)
    assert dict(item.split("=") for item in stated.split()) == \
        {key: str(value).lower() for key, value in PLAIN_PSEUDO_LABELS.items()}


def _github_anchors(markdown):
    """The anchors GitHub gives a Markdown file's headings: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.*)$", markdown, re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_relative_links_of_the_docs_resolve():
    """Every relative link of the README, docs/*.md and bench/README.md names a file that exists,
    and a heading of it where it names one (sections move between these files)."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md")), README.parent / "bench" / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            name, _, anchor = target.partition("#")
            linked = (page.parent / name) if name else page
            if not linked.exists() or anchor and anchor not in _github_anchors(linked.read_text()):
                broken.append(f"{page.relative_to(README.parent)}: {target}")
    assert len(pages) >= 6 and not broken, broken


def test_the_fused_match_picture_is_drawn_by_its_script(tmp_path):
    """scripts/draw_fused_match.py draws the schematic the README shows (committed as docs/fused_match.png)."""
    spec = importlib.util.spec_from_file_location("draw_fused_match", README.parent / "scripts" / "draw_fused_match.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    drawn = module.draw(tmp_path / "fused_match.png")
    committed = README.parent / "docs" / "fused_match.png"
    image = pytest.importorskip("PIL.Image")
    with image.open(drawn) as new, image.open(committed) as old:  # a changed layout changes the size
        assert new.size == old.size, "redraw docs/fused_match.png with scripts/draw_fused_match.py"
    assert "](docs/fused_match.png)" in README.read_text()
