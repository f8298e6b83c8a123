"""The ``refmatch`` command line: ``refmatch <command> [options]``."""
import sys

COMMANDS = {
    "train": ("refmatch.recipes.cli:train_main", "train a U-Net: supervised, meanteacher-pl or refmatch"),
    "evaluate": ("refmatch.recipes.cli:evaluate_main", "Dice, IoU and HD95 of a checkpoint on a dataset"),
    "pseudo-label": ("refmatch.recipes.cli:pseudo_label_main", "write pseudo-label PNGs for a folder of images"),
    "compare-pseudo-labels": ("refmatch.recipes.compare_pseudo_labels:main",
                              "score pseudo-label settings of a run against hidden masks"),
    "demo": ("refmatch.demo:main", "pseudo-labels from a synthetic reference bank"),
    "bench": ("refmatch.bench:main", "benchmark match against the dense GEMM and peers"),
    "info": ("refmatch.info:main", "versions, compiled archs and backend availability"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: refmatch <command> [options]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<22} {summary}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    module_name, function = COMMANDS[argv[0]][0].split(":")
    getattr(importlib.import_module(module_name), function)(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
