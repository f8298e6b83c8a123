"""The ``refmatch`` command line: ``refmatch <command> [options]``."""
import sys

COMMANDS = {
    "demo": ("refmatch.demo", "pseudo-labels from a synthetic reference bank (embedded default)"),
    "info": ("refmatch.info", "versions, compiled archs and backend availability"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: refmatch <command> [options]\n\ncommands:")
        for name, (_, summary) in COMMANDS.items():
            print(f"  {name:<8} {summary}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:]) if argv[0] != "info" else module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
