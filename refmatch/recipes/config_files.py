"""Config files: YAML read with the place of an error, ``extends`` chains, and the copies of
the repository's configs that the package ships (``refmatch.configs``)."""
import warnings
from importlib import resources
from pathlib import Path

NO_ALIASES = "refmatch takes no YAML aliases (*name): write the value out, or use extends:"


def shipped_configs():
    """The folder of the configs the package ships (``refmatch.configs``), or None where an older
    editable install does not map it."""
    try:
        return Path(str(resources.files("refmatch.configs")))
    except ModuleNotFoundError:
        return None


def bundled_or_given(path):
    """``path``, or where it names no file and reads ``configs/NAME.yaml`` or ``NAME.yaml``, the
    package's copy of the repository's config NAME (an install used outside the checkout), with
    a warning naming it."""
    shipped = shipped_configs()
    if path.is_file() or path.parent not in (Path("."), Path("configs")) or shipped is None \
            or not (shipped / path.name).is_file():
        return path
    warnings.warn(f"{path} is not here: reading the package's copy, {shipped / path.name}", stacklevel=3)
    return shipped / path.name


def file_values(path, extended_by=()):
    """The key: value pairs of config file ``path`` over those of the file it extends;
    ``extended_by``: the files that extend it, nearest last (to name a loop or a missing file)."""
    if not path.is_file():
        via = f" (extended by {' <- '.join(map(str, reversed(extended_by)))})" if extended_by else ""
        folder = shipped_configs()
        own = f" (the package's own: {', '.join(sorted(entry.name for entry in folder.glob('*.yaml')))})" \
            if folder else ""
        raise FileNotFoundError(f"config not found: {path}{via}{own}")
    if path.resolve() in {child.resolve() for child in extended_by}:
        raise ValueError(f"configs extend each other in a loop: {' -> '.join(map(str, extended_by + (path,)))}")
    loaded = parsed_yaml(path.read_text(), path) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} must hold key: value lines, got a {type(loaded).__name__}")
    parent = loaded.pop("extends", None)
    if parent is None:
        return loaded
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: extends must name one config file, got {parent!r}")
    values = file_values(path.parent / parent, extended_by + (path,))
    values.update(loaded)
    return values


def parsed_yaml(text, where):
    """YAML ``text``, or a ValueError naming ``where`` (a file or an override). Aliases (``*name``)
    are refused: nested ones made a 349-byte config that an error message, printing the value,
    expanded to 520 MB."""
    import yaml  # the [train] extra

    class NoAliasLoader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise yaml.composer.ComposerError(None, None, NO_ALIASES,
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    try:
        return yaml.load(text, Loader=NoAliasLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or error
        refused = " is valid YAML, but" if problem == NO_ALIASES else " is not valid YAML"
        raise ValueError(f"{where}{refused}{at}: {problem}") from None
