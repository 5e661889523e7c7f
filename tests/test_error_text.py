"""No code of ours decides anything by reading an exception's text, or rewrites it: an error that
a caller needs to tell apart or to word otherwise carries what it needs (a field, a path, a kind).
Third-party text that carries nothing else is allowed, one entry each, with the reason."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dogbreed"

# (file, function, the expression that reads the text) -> why nothing else would do
ALLOWED = {
    ("runtime/loading.py", "read_tensors", '"Unsupported global" in str(exc)'):
        "torch.load(weights_only=True) refuses pickled objects with the same exception types it raises for a "
        "damaged file; only its text tells them apart",
    ("runtime/loading.py", "load_failure", "str(exc).splitlines()"):
        "load_state_dict's and the ONNX/TorchScript runtimes' many-line messages, cut to a line",
    ("remote.py", "s3_errors", '"bucket does not exist" in str(exc)'):
        "S3's NoSuchBucket message: s3fs raises FileNotFoundError for a missing bucket and a missing key alike",
    ("files.py", "read_yaml", "str(exc).splitlines()"):
        "PyYAML's parse error, whose first line says where the document broke",
    ("archive.py", "safe_extract_tar", "str(exc).splitlines()"):
        "tarfile's and gzip's messages, cut to their first line",
    ("tune/study.py", "work", "str(exc).splitlines()"):
        "whatever a failed trial raised (any library's), cut to one line for the trials table",
    ("tune/results.py", "write_plots", "str(exc).splitlines()"):
        "optuna's refusal to draw a plot (too few trials, ...), cut to one line",
}


def _exception_names(tree: ast.AST) -> set[str]:
    """Names that hold an exception: ``except ... as NAME``, and parameters typed as one."""
    names = {node.name for node in ast.walk(tree) if isinstance(node, ast.ExceptHandler) and node.name}
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            if ast.unparse(node.annotation).endswith(("Exception", "Error")):
                names.add(node.arg)
    return names


def _is_text(node: ast.AST, names: set[str]) -> bool:
    """``str(exc)``, ``exc.args``, ``exc.message``, ``f"{exc}"``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("str", "repr"):
        return len(node.args) == 1 and isinstance(node.args[0], ast.Name) and node.args[0].id in names
    if isinstance(node, ast.Attribute) and node.attr in ("args", "message"):
        return isinstance(node.value, ast.Name) and node.value.id in names
    if isinstance(node, ast.JoinedStr) and len(node.values) == 1 and isinstance(node.values[0], ast.FormattedValue):
        value = node.values[0].value
        return isinstance(value, ast.Name) and value.id in names
    return False


def readings(source: str) -> list[tuple[str, str]]:
    """(function, expression) for each place an exception's text is compared, searched, cut,
    indexed or rewritten (handing it on whole, or formatting it into a message, is fine)."""
    tree = ast.parse(source)
    names = _exception_names(tree)
    parents, functions = {}, {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[child] = node.name
    found = []
    for node in ast.walk(tree):
        if not _is_text(node, names):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Attribute):  # a method of the text: .replace(, .startswith(, .split(...
            parent = parents[parent] if isinstance(parents.get(parent), ast.Call) else parent
        elif not (isinstance(parent, (ast.Compare, ast.Subscript))  # "..." in str(exc), exc.args[0]
                  or isinstance(parent, ast.Call) and ast.unparse(parent.func).startswith("re.")):  # re.match(.., str(exc))
            continue
        owner = parent
        while owner in parents and owner not in functions:
            owner = parents[owner]
        found.append((parent.lineno, parent.col_offset, functions.get(owner, "<module>"),
                      ast.get_source_segment(source, parent)))
    return [(function, text) for _, _, function, text in sorted(found)]


def test_no_code_of_ours_reads_an_exceptions_text_except_third_party_text():
    found = {(path.relative_to(PACKAGE).as_posix(), *reading)
             for path in sorted(PACKAGE.rglob("*.py")) for reading in readings(path.read_text(encoding="utf-8"))}
    assert found - ALLOWED.keys() == set(), "carry the field, path or kind on the exception instead"
    assert ALLOWED.keys() - found == set(), "an allowed entry no longer matches: remove it"


def test_the_check_sees_each_way_of_reading_the_text():
    source = '''
def f(run):
    try:
        run()
    except ValueError as exc:
        a = str(exc).replace("keep must", "reject_keep must")
        b = str(exc).removeprefix("dir: ")
        c = "no data" in str(exc)
        d = exc.args[0] == "x"
        e = re.match("image:", str(exc))
        f"{exc}".startswith("a")
        keep = DogbreedError(str(exc))  # handed on whole: fine
        print(f"error: {exc}")  # formatted into a message: fine


def g(exc: Exception) -> str:
    return str(exc).split(":")[0]
'''
    assert readings(source) == [
        ("f", 'str(exc).replace("keep must", "reject_keep must")'), ("f", 'str(exc).removeprefix("dir: ")'),
        ("f", '"no data" in str(exc)'), ("f", "exc.args[0]"), ("f", 're.match("image:", str(exc))'),
        ("f", 'f"{exc}".startswith("a")'), ("g", 'str(exc).split(":")')]
