"""The docs are executable: every Python block runs, every ``repalign`` command line parses,
every ``repalign.`` name and ``--option`` they cite exists.

Pages: ``README.md`` and ``docs/*.md`` (``tests/_docs_collect.py`` reads them).

**Python blocks** (```python fences) run as a reader runs them: each in a fresh
namespace, in its own temporary working directory (no block relies on an earlier block
having run). Files a block reads are small stand-ins built first
(``tests/_docs_inputs.py``: a tiny untrained ViLBERT run ``runs/ap``, ``vilbert.nc``,
``text.nc``, ``text.shard*of4.nc`` and ``scores.nc``), copied in when the block names
them. Metrics a block registers are unregistered afterwards. A block that cannot run
in CI carries ``<!-- docs-test: skip (the reason) -->`` on the line before its fence
(reported as skipped with that reason; on a shell fence it skips the fence's command
lines, which should rarely be needed: parsing needs nothing); a slow but runnable one
``<!-- docs-test: slow -->`` (run with ``-m slow``).

**Command lines**: every line of a shell fence (```bash, ```console, ```sh or an
unlabelled fence; ``\\`` continuations joined, ``# comments`` dropped) that starts with
``repalign`` or runs ``torchrun/python ... -m repalign``, and every inline code span
that starts with ``repalign ``, is parsed by the real CLI (``repalign.cli.main.app``,
click as vendored by typer) without running it: the verb and sub-verb must exist, and
unknown options, missing required arguments and values of the wrong type fail. An
inline span names a command in a sentence: it must resolve and the options it shows
must parse, but required arguments may be left out (``repalign compare --streaming``). Beyond the parser, checks that need no data run too (``DRY_RUNS``):
``train`` resolves its full config (``--config`` file, flags, ``key=value``
overrides) with training stubbed out, ``compare`` validates its metrics, flags and
``--out`` with the computation stubbed out, and ``extract``/``layers`` must name a
registered adapter and ``extract`` a known pooling.

**Names and options the prose cites**: every inline code span that is a dotted
``repalign.`` name (``repalign.store.merge.write_merged``) must import/resolve, and every
``--option`` in an inline span must be an option of some repalign verb (of the benchmark
script when the span is ``python benchmarks/X.py ...``; other programs' spans, such as
``pip install --no-deps``, are left alone). A span of ``section.key=value`` overrides
(``optim.lr=1e-3``) must resolve in the pretraining or the fine-tuning config. Links
(and their ``#anchors``), ``make`` targets and the repository files the prose cites as evidence
(``benchmarks/results/...``, ``tests/...``) must exist.

Placeholders the docs use for the reader's own paths and values are replaced token by
token before parsing (``PLACEHOLDERS`` below; ``None`` drops the token). Other paths
are taken as written: parsing never opens them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests._docs_collect import (
    ROOT,
    Block,
    CommandLine,
    DottedName,
    InlineFlag,
    Overrides,
    Reference,
    command_lines,
    config_overrides,
    dotted_names,
    heading_anchors,
    inline_flags,
    make_targets,
    python_blocks,
    references,
)
from tests._docs_inputs import StandIns

#: documented placeholder -> what the parse uses (None: the token is dropped)
PLACEHOLDERS: dict[str, str | None] = {
    "PATH": "models/bert",  # --text-model PATH: a local transformers directory
    "PATH_TO_BERT_DIR": "models/bert",
    "NAME_OR_DIR": "vit_tiny_patch16_224",  # --vision-model: a timm name or directory
    "RUN": "runs/ap",
    "RUN/last": "runs/ap/last",
    "DATA": "synthetic:8",
    "CACHE": "cache/cc",
    "DIR": "images",  # data.images=DIR
    "S": "64",  # data cache --size S
    "FILE.yaml": "configs/vilbert-tiny.yaml",
    # the config.yaml a run saves is its resolved config: the file it started from stands in
    "runs/tiny/config.yaml": "configs/vilbert-tiny.yaml",
    "...": None,  # "and the other options"
    "[overrides]": None,
}


def substitute(argv: tuple[str, ...]) -> list[str]:
    """``argv`` with the documented placeholders replaced (``PLACEHOLDERS``)."""
    out = []
    for token in argv:
        value = PLACEHOLDERS.get(token, token)
        if value is not None:
            out.append(value)
    return out


# ------------------------------------------------------------------ the Python blocks


def _block_param(block: Block):
    marks = []
    if block.marker is not None and block.marker.kind == "skip":
        marks.append(pytest.mark.skip(reason=f"{block.where}: {block.marker.reason}"))
    if block.marker is not None and block.marker.kind == "slow":
        marks.append(pytest.mark.slow)
    return pytest.param(block, id=block.test_id, marks=marks)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> StandIns:
    return StandIns(tmp_path_factory.mktemp("doc-inputs"))


@pytest.fixture
def fresh_registry():
    """Metrics a block registers (the 'Your own metric' example) are removed afterwards."""
    from repalign.metrics import _registry

    before = dict(_registry._METRICS)
    yield
    _registry._METRICS.clear()
    _registry._METRICS.update(before)


@pytest.mark.parametrize("block", [_block_param(b) for b in python_blocks()])
def test_python_block_runs(block: Block, stand_ins, fresh_registry, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")  # a block may draw (xarray's .plot())
    monkeypatch.chdir(tmp_path)
    stand_ins.provide(block.source, tmp_path)
    namespace: dict = {"__name__": "__main__"}
    code = compile(block.source, f"{block.where} ({block.heading})", "exec")
    try:
        exec(code, namespace)  # the page's code, as a reader runs it
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")


# ------------------------------------------------------------------ the command lines


def _cli():
    import typer

    from repalign.cli.main import app

    return typer.main.get_command(app)


def _optional_copy(command):
    """``command`` with every parameter optional: prose names a verb with the options it
    talks about (`repalign compare --streaming`), not a whole command."""
    import copy

    loose = copy.copy(command)
    loose.params = [copy.copy(param) for param in command.params]
    for param in loose.params:
        param.required = False
    return loose


def parse(argv: list[str], *, prose: bool = False):
    """Parse ``repalign ARGV`` as the CLI would, without invoking anything.

    Returns ``(path, ctx)``: the verb path (``["train", "pretrain"]``) and the innermost
    click context (``ctx.params`` are the converted values), or ``ctx`` None when
    ``argv`` stops at a group (``repalign train``) or, with ``prose``, when it is only a
    verb path (``repalign compare`` named in a sentence). With ``prose``, required
    arguments and options may be left out; what is given must still parse.
    """
    if prose and not argv:
        return [], None  # `repalign ...`: the command itself
    group = _cli()
    ctx = group.make_context("repalign", list(argv), resilient_parsing=False)
    path: list[str] = []
    while hasattr(ctx.command, "commands"):  # a group: the rest names a verb
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            return path, None
        name, rest = rest[0], rest[1:]
        command = ctx.command.get_command(ctx, name)
        if command is None:
            known = ", ".join(sorted(ctx.command.commands))
            raise AssertionError(f"`{ctx.command_path}` has no verb {name!r}; it has: {known}")
        path.append(name)
        if prose and not rest:
            return path, None
        if prose and not hasattr(command, "commands"):
            command = _optional_copy(command)
        ctx = command.make_context(name, rest, parent=ctx, resilient_parsing=False)
    return path, ctx


class _Reached(Exception):
    """The stubbed computation was reached: every check before it passed."""


def _reached(*_args, **_kwargs):
    raise _Reached


def _dry_train(ctx, monkeypatch, workdir: Path) -> None:
    """``train pretrain|finetune``: resolve the whole config, stop before training."""
    import repalign.cli.train_cmd as train_cmd
    import repalign.train.finetune
    import repalign.train.pretrain

    monkeypatch.setattr(repalign.train.pretrain, "run_pretraining", _reached)
    monkeypatch.setattr(repalign.train.finetune, "run_finetuning", _reached)
    # the device (cuda in the torchrun examples) and an existing run are the runtime's
    monkeypatch.setattr(train_cmd, "_check_run", lambda *a, **k: None)
    monkeypatch.chdir(ROOT)  # --config configs/... is relative to the repository
    ctx.command.invoke(ctx)


def _dry_compare(ctx, monkeypatch, workdir: Path) -> None:
    """``compare``: metrics, flags and ``--out`` checked, stop before reading features."""
    import repalign.cli.compare_cmd as compare_cmd

    monkeypatch.setattr(compare_cmd, "_streaming", _reached)
    monkeypatch.setattr("repalign.compare.compare", _reached)
    monkeypatch.chdir(workdir)
    ctx.command.invoke(ctx)


def _check_adapter(ctx, monkeypatch, workdir: Path) -> None:
    """``extract``/``layers``: a registered adapter; ``extract``: a known pooling."""
    from repalign.extract.pooling import check_pooling
    from repalign.models import get_adapter

    get_adapter(ctx.params["model"])
    if "pool" in ctx.params:
        check_pooling(ctx.params["pool"])
    raise _Reached


#: verb path -> the check run on the parsed context (it ends by raising _Reached)
DRY_RUNS = {
    ("train", "pretrain"): _dry_train,
    ("train", "finetune"): _dry_train,
    ("compare",): _dry_compare,
    ("extract",): _check_adapter,
    ("layers",): _check_adapter,
}


def check_command(cmd: CommandLine, workdir: Path, monkeypatch, capsys) -> None:
    """Parse ``cmd`` (and dry-run it where ``DRY_RUNS`` says); ``pytest.fail`` saying why not."""
    argv = substitute(cmd.argv)
    shown = f"{cmd.where}: `repalign {' '.join(argv)}`"
    try:
        path, ctx = parse(argv, prose=cmd.inline)
    except AssertionError as err:
        pytest.fail(f"{shown} does not parse: {err}")
    except Exception as err:  # click's UsageError and friends (vendored: matched by shape)
        message = err.format_message() if hasattr(err, "format_message") else repr(err)
        pytest.fail(f"{shown} does not parse: {message}")
    if ctx is None:
        return  # a verb or group named in prose: it resolved
    if cmd.inline:  # a whole command in prose is dry-run too; a verb with options is not
        try:
            path, ctx = parse(argv)
        except Exception:
            return  # required arguments left out: the options given did parse
    check = DRY_RUNS.get(tuple(path))
    if check is None:
        return
    try:
        check(ctx, monkeypatch, workdir)
    except _Reached:
        return
    except Exception as err:  # typer.Exit after the CLI's own error line, or a library error
        detail = capsys.readouterr().err.strip() or repr(err)
        pytest.fail(f"{shown} is refused: {detail}")
    pytest.fail(f"{shown} finished without reaching its work")


def _command_param(cmd: CommandLine):
    skip = cmd.marker is not None and cmd.marker.kind == "skip"
    marks = [pytest.mark.skip(reason=f"{cmd.where}: {cmd.marker.reason}")] if skip else []
    return pytest.param(cmd, id=cmd.test_id, marks=marks)


@pytest.mark.parametrize("cmd", [_command_param(c) for c in command_lines()])
def test_command_line_parses(cmd: CommandLine, tmp_path, monkeypatch, capsys):
    check_command(cmd, tmp_path, monkeypatch, capsys)


# ------------------------------------------------------------------ the names the prose cites


def resolve(name: str) -> object:
    """The object ``name`` (``repalign.pkg.module.attr``) denotes: the longest importable
    module prefix, then attributes."""
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError as err:
            if err.name is None or not ".".join(parts[:cut]).startswith(err.name):
                raise  # the module exists but imports something missing
            continue
        for k, attr in enumerate(parts[cut:], start=cut):
            if not hasattr(obj, attr):
                raise AttributeError(f"{'.'.join(parts[:k])} has no attribute {attr!r}")
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(f"no module {parts[0]!r}")


@pytest.mark.parametrize("cited", [pytest.param(d, id=d.test_id) for d in dotted_names()])
def test_cited_name_exists(cited: DottedName):
    try:
        resolve(cited.name)
    except (ImportError, AttributeError) as err:
        pytest.fail(f"{cited.test_id}: the docs cite `{cited.name}`, which does not exist: {err}")


def _cli_options() -> set[str]:
    """Every option name of every repalign verb (``--out``, ``--no-progress`` ...)."""
    names: set[str] = set()

    def walk(command) -> None:
        for param in command.params:
            names.update(getattr(param, "opts", ()), getattr(param, "secondary_opts", ()))
        for sub in getattr(command, "commands", {}).values():
            walk(sub)

    walk(_cli())
    return names


def _script_defines(script: str, flag: str) -> bool:
    """Whether ``benchmarks/...py`` declares ``flag`` (as a quoted string in its source)."""
    source = (ROOT / script).read_text(encoding="utf-8")
    return f'"{flag}"' in source or f"'{flag}'" in source


@pytest.mark.parametrize("cited", [pytest.param(f, id=f.test_id) for f in inline_flags()])
def test_cited_option_exists(cited: InlineFlag):
    """An ``--option`` the prose names is a repalign option; in a ``python benchmarks/X.py``
    span (or a paragraph about that script) an option of that script."""
    scripts = [w for w in cited.scripts if cited.span.startswith(f"python {w}")]
    if scripts:  # the span is that script's command line: its options only
        assert _script_defines(scripts[0], cited.flag), (
            f"{cited.test_id}: `{cited.span}` names {cited.flag}, which {scripts[0]} does not take"
        )
        return
    known = cited.flag in _cli_options() or any(
        _script_defines(w, cited.flag) for w in cited.scripts
    )
    assert known, (
        f"{cited.test_id}: `{cited.span}` names {cited.flag}, which no repalign verb "
        f"{'nor ' + ', '.join(cited.scripts) + ' ' if cited.scripts else ''}takes"
    )


@pytest.mark.parametrize("cited", [pytest.param(o, id=o.test_id) for o in config_overrides()])
def test_cited_config_overrides_resolve(cited: Overrides):
    """``optim.lr=1e-3`` in prose is a ``train`` override: it must resolve in the
    pretraining or the fine-tuning config (placeholder values substituted)."""
    from repalign.train.config import FinetuneConfig, PretrainConfig, load_config

    items = []
    for item in cited.items:
        key, value = item.split("=", 1)
        items.append(f"{key}={PLACEHOLDERS.get(value) or value}")
    errors = []
    for kind in (PretrainConfig, FinetuneConfig):
        try:
            load_config(kind, None, items)
            return
        except (ValueError, KeyError) as err:
            errors.append(f"{kind.__name__}: {err}")
    pytest.fail(f"{cited.test_id}: not a valid train override: {'; '.join(errors)}")


@pytest.mark.parametrize("cited", [pytest.param(r, id=r.test_id) for r in references()])
def test_cited_file_exists(cited: Reference):
    """A link (relative to its page) or a cited repository path (``benchmarks/results/...``,
    ``tests/...``, relative to the repository) exists; a link's ``#anchor`` is a heading."""
    target, _, anchor = cited.target.partition("#")
    base = cited.path.parent if cited.kind == "link" else ROOT
    file = (base / target) if target else cited.path
    assert file.exists(), f"{cited.test_id}: {cited.kind} to {file}, which does not exist"
    if anchor:
        anchors = heading_anchors(file)
        assert anchor in anchors, (
            f"{cited.test_id}: {file.name} has no heading with anchor #{anchor}; "
            f"it has: {', '.join(sorted(anchors))}"
        )


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M))


@pytest.mark.parametrize(
    "where,line,target", [pytest.param(*t, id=f"{t[0]}:{t[1]} make {t[2]}") for t in make_targets()]
)
def test_documented_make_target_exists(where: str, line: int, target: str):
    targets = _makefile_targets()
    assert target in targets, (
        f"{where}:{line}: `make {target}`, but the Makefile has no such target "
        f"(it has: {', '.join(sorted(targets))})"
    )


# ------------------------------------------------------------------ the checker can fail

_BAD_PAGE = """# Bad page

```bash
repalign compare a.nc --metrc cka --out s.nc
repalign comparee a.nc --out s.nc
repalign compare a.nc --permutations many --out s.nc
repalign compare a.nc -m cka --k 10 --out s.nc     # --k: no chosen metric takes it
repalign compare a.nc -m ckaa --out s.nc
repalign train pretrain --preset tiny \\
    loop.stepz=3
torchrun --nproc-per-node 2 -m repalign extract --model nope --data synthetic --out f.nc
repalign extract --model hf-text --data synthetic --pool max --out f.nc
repalign plot
```

Named in prose: `repalign plot-trainin`, `repalign compare --streaming` (fine),
`repalign compare --chunk-size big`, `repalign compare --streamin`,
`repalign compare a.nc -m ckaa --out s.nc` (a whole command: dry-run).
"""

_EXPECTED = [
    "No such option: --metrc",
    "has no verb 'comparee'",
    "Invalid value for '--permutations'",
    "--k is an option none of the chosen metrics",
    "ckaa",
    "unknown config key 'loop.stepz'",
    "unknown model adapter 'nope'",
    "unknown pooling 'max'",
    "Missing argument",
    "has no verb 'plot-trainin'",
    None,
    "Invalid value for '--chunk-size'",
    "No such option: --streamin",
    "ckaa",
]


def test_the_checker_fails_wrong_command_lines(tmp_path, monkeypatch, capsys):
    page = tmp_path / "bad.md"
    page.write_text(_BAD_PAGE)
    cmds = command_lines((page,))
    assert [c.line for c in cmds] == [4, 5, 6, 7, 8, 9, 11, 12, 13, 16, 16, 17, 17, 18]
    assert cmds[5].argv[-1] == "loop.stepz=3" and cmds[6].argv[:3] == ("extract", "--model", "nope")
    for cmd, expected in zip(cmds, _EXPECTED, strict=True):
        if expected is None:
            check_command(cmd, tmp_path, monkeypatch, capsys)
            continue
        with pytest.raises(pytest.fail.Exception, match=re.escape(expected)):
            check_command(cmd, tmp_path, monkeypatch, capsys)


def test_the_collector_reads_markers_and_placeholders(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Section\n\n<!-- docs-test: skip (needs a GPU) -->\n\n```python\nx = 1\n```\n\n"
        "<!-- docs-test: slow -->\n```python\ny = 2\n```\n\n"
        "```console\n$ repalign extract --model vilbert --ckpt RUN/last ... --data DATA\n```\n"
    )
    first, second = python_blocks((page,))
    assert (first.line, first.heading, first.source) == (7, "Section", "x = 1\n")
    assert (first.marker.kind, first.marker.reason) == ("skip", "needs a GPU")
    assert second.marker.kind == "slow"
    (cmd,) = command_lines((page,))
    assert substitute(cmd.argv) == [
        "extract", "--model", "vilbert", "--ckpt", "runs/ap/last", "--data", "synthetic:8",
    ]  # fmt: skip
    page.write_text("- a list item:\n\n  ```python\n  z = 3\n  if z:\n      z = 4\n  ```\n")
    (indented,) = python_blocks((page,))
    assert indented.source == "z = 3\nif z:\n    z = 4\n"
    page.write_text("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match="needs its reason"):
        python_blocks((page,))


def test_the_checker_fails_wrong_names_and_options(tmp_path):
    page = tmp_path / "bad.md"
    page.write_text(
        "# `repalign.metrics.cka`\n\n"
        "See `repalign.metrics.no_such_metric()` and `repalign.no_such_module.thing`.\n\n"
        "Pass `--layers-a GLOB` or `--no-such-flag`; `pip install --no-deps x` is pip's.\n\n"
        "Time it with `python benchmarks/train.py --device cuda --no-such-bench-flag`.\n\n"
        "Set `optim.lr=1e-3 [loop.threads=1]` but not `optim.lrr=1e-3`.\n"
    )
    names = dotted_names((page,))
    assert [n.name for n in names] == [
        "repalign.metrics.cka", "repalign.metrics.no_such_metric", "repalign.no_such_module.thing",
    ]  # fmt: skip
    test_cited_name_exists(names[0])
    for wrong in names[1:]:
        with pytest.raises(pytest.fail.Exception, match="does not exist"):
            test_cited_name_exists(wrong)
    flags = inline_flags((page,))
    assert [f.flag for f in flags] == [
        "--layers-a", "--no-such-flag", "--device", "--no-such-bench-flag",
    ]  # fmt: skip
    test_cited_option_exists(flags[0])
    test_cited_option_exists(flags[2])
    for wrong in (flags[1], flags[3]):
        with pytest.raises(AssertionError, match="does not take|no repalign verb"):
            test_cited_option_exists(wrong)
    good, bad = config_overrides((page,))
    assert good.items == ("optim.lr=1e-3", "loop.threads=1")
    test_cited_config_overrides_resolve(good)
    with pytest.raises(pytest.fail.Exception, match="unknown config key 'optim.lrr'"):
        test_cited_config_overrides_resolve(bad)


def test_the_checker_fails_broken_links_and_cited_files(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text(
        "# Other\n\n## The `vilbert` adapter\n\n```\n# not a heading\n```\n"
    )
    page.write_text(
        "See [there](other.md#the-vilbert-adapter), [gone](gone.md), "
        "[nowhere](other.md#not-a-heading) and ![fig](img/none.png).\n\n"
        "Measured: `benchmarks/results/h200_extract_cuda.txt`, benchmarks/results/never_run.txt.\n"
    )
    refs = references((page,))
    assert [(r.kind, r.target) for r in refs] == [
        ("link", "other.md#the-vilbert-adapter"), ("link", "gone.md"),
        ("link", "other.md#not-a-heading"), ("link", "img/none.png"),
        ("path", "benchmarks/results/h200_extract_cuda.txt"),
        ("path", "benchmarks/results/never_run.txt"),
    ]  # fmt: skip
    for good in (refs[0], refs[4]):
        test_cited_file_exists(good)
    for bad in (refs[1], refs[2], refs[3], refs[5]):
        with pytest.raises(AssertionError, match="does not exist|has no heading"):
            test_cited_file_exists(bad)
