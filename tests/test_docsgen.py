"""`shapecalc docs`: the committed pages are current, their values are what
torch computes, and --check catches a changed layer."""

import errno
import os
import re
from pathlib import Path

import pytest
import torch
import torch.fx

from shapecalc import load_model
from shapecalc.cli import main
from shapecalc import ShapecalcError
from shapecalc.output.docsgen import Page, generate, page_filename, stale_pages, write_pages

REPO = Path(__file__).resolve().parents[1]
PAGES = REPO / "docs" / "sizes"
BUNDLED = ("fcn8s", "deeplabv3")


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table under ``heading``: column names and rows of cells."""
    section = text.split(f"\n{heading}\n", 1)[1]
    lines = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return split[0], split[2:]


def meta_shapes(model_name: str, height: int) -> dict[str, tuple]:
    """Every fx node's tensor shape in a real forward pass on the meta device."""
    graph_module = torch.fx.symbolic_trace(load_model(model_name))
    shapes = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, node):
            value = super().run_node(node)
            if isinstance(value, torch.Tensor):
                shapes[node.name] = tuple(value.shape)
            return value

    Recorder(graph_module).run(torch.empty(1, 3, height, height, device="meta"))
    return shapes


def test_committed_pages_are_current(capsys):
    code, out, err = run(capsys, "docs", "--out", str(PAGES), "--check")
    assert code == 0, out + err
    assert out.strip() == f"3 pages and 2 pictures in {PAGES} up to date"


@pytest.mark.parametrize("model_name", BUNDLED)
def test_page_values_match_torch(model_name):
    text = (PAGES / f"{model_name}.md").read_text()
    columns, rows = table(text, "## Layers")
    size_columns = {i: int(c.split("=")[1]) for i, c in enumerate(columns) if re.fullmatch(r"H=\d+", c)}
    assert len(size_columns) == 3
    checked = 0
    for height in sorted(set(size_columns.values())):
        shapes = meta_shapes(model_name, height)
        column = next(i for i, h in size_columns.items() if h == height)
        for row in rows:
            name = row[0].strip("`")
            values = tuple(int(v) for v in row[column].split(" x "))
            real = shapes[name][2:]
            assert real == (values * len(real) if len(values) == 1 else values), (model_name, height, name)
            checked += 1
    assert checked == 3 * len(rows) and len(rows) > 40


def test_fcn8s_page_shows_derived_crops_and_domain():
    text = (PAGES / "fcn8s.md").read_text()
    _, rows = table(text, "## Crops")
    assert [(r[0], r[3], r[4], r[5]) for r in rows] == [
        ("`getitem_2`", "`5`", "`5`", "✓"), ("`getitem_5`", "`9`", "`9`", "✓"), ("`getitem_8`", "`31`", "`31`", "✓")]
    assert "The forward pass runs for every H >= 1." in text


@pytest.mark.parametrize("model_name", BUNDLED)
def test_mermaid_edges_carry_the_source_size(model_name):
    text = (PAGES / f"{model_name}.md").read_text()
    _, rows = table(text, "## Layers")
    sizes = {r[0].strip("`"): r[3].strip("`") for r in rows}
    diagram = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    edges = re.findall(r'^  (\w+) -->\|"([^"]*)"\| (\w+)$', diagram, flags=re.M)
    boxes = re.findall(r'^  (\w+)\["', diagram, flags=re.M)
    assert edges and set(boxes) <= set(sizes)
    for source, label, target in edges:
        assert label == sizes[source], (source, label)
        assert target in boxes or target == "output"
    # every layer is a box or folded into one ("+ ReLU" ...), and sizes flow to the output
    assert len(boxes) + sum(line.count(", ") + 1 for line in re.findall(r"<br/>\+ ([^\"]*)\"", diagram)) == len(sizes)
    assert any(target == "output" and label == "H" for _, label, target in edges)


def test_pages_are_deterministic():
    first = generate(["fcn8s"])
    second = generate(["fcn8s"])
    assert first == second
    assert first[0].text == (PAGES / "fcn8s.md").read_text()


FCN_SOURCE = (REPO / "segmodels" / "fcn.py").read_text().replace("from ._blocks import", "from segmodels._blocks import")


def test_check_fails_after_a_padding_change(tmp_path, capsys):
    model_file = tmp_path / "mynet.py"
    model_file.write_text(FCN_SOURCE)
    out_dir = tmp_path / "sizes"
    spec = f"{model_file}:fcn8s"
    code, out, _ = run(capsys, "docs", spec, "--out", str(out_dir))
    assert code == 0 and out.split() == ["wrote", str(out_dir / "fcn8s.md"), "wrote", str(out_dir / "fcn8s.svg")]
    code, out, _ = run(capsys, "docs", spec, "--out", str(out_dir), "--check")
    assert code == 0, out

    changed = "self.conv1_2 = nn.Conv2d(c1, c1, 3, padding=1)"
    assert FCN_SOURCE.count(changed) == 1
    model_file.write_text(FCN_SOURCE.replace(changed, changed.replace("padding=1", "padding=2")))
    code, out, _ = run(capsys, "docs", spec, "--out", str(out_dir), "--check")
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{out_dir / 'fcn8s.md'} is stale: it differs from what shapecalc gives now"
    assert any("k3 p2" in line for line in lines)  # the diff shows the changed layer
    assert lines[-1] == f"regenerate with: shapecalc docs {spec} --out {out_dir}"
    assert (out_dir / "fcn8s.md").read_text() != generate([spec])[0].text  # --check wrote nothing


def test_check_reports_missing_and_orphan_pages(tmp_path, capsys):
    pages = generate(["fcn8s"])
    assert stale_pages(pages, tmp_path) == [f"{tmp_path / name} is missing (shapecalc docs would write it)"
                                            for name in ("fcn8s.md", "fcn8s.svg")]
    (tmp_path / "fcn8s.md").write_text(pages[0].text)
    (tmp_path / "fcn8s.svg").write_text(pages[1].text)
    (tmp_path / "oldnet.md").write_text("# gone\n")
    assert stale_pages(pages, tmp_path) == []
    assert stale_pages(pages, tmp_path, complete=True) == [f"{tmp_path / 'oldnet.md'} is stale: no bundled model generates it"]


def test_page_filenames():
    assert page_filename("fcn8s") == "fcn8s.md"
    assert page_filename("pkg.nets:build_unet") == "build_unet.md"
    assert page_filename("path/to/my net.py:Net") == "Net.md"


@pytest.mark.parametrize("argv, words", [
    (["--sizes", "0"], "bad --sizes"),
    (["--sizes", "a,b"], "bad --sizes"),
    (["fcn8s", "fcn8s"], "would both write fcn8s.md"),
    (["--input", "0"], "sizes must be positive"),
    (["nosuchnet"], "unknown model"),
])
def test_usage_errors_exit_2(capsys, tmp_path, argv, words):
    code, _, err = run(capsys, "docs", *argv, "--out", str(tmp_path))
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())


def test_custom_sizes_and_concrete_input(tmp_path, capsys):
    code, _, _ = run(capsys, "docs", "fcn8s", "--out", str(tmp_path), "--sizes", "64,100")
    assert code == 0
    columns, _ = table((tmp_path / "fcn8s.md").read_text(), "## Layers")
    assert [c for c in columns if c.startswith("H=")] == ["H=64", "H=100"]
    code, _, _ = run(capsys, "docs", "fcn8s", "--out", str(tmp_path), "--input", "500x375")
    text = (tmp_path / "fcn8s.md").read_text()
    assert code == 0 and "- input: 500 x 375" in text
    _, rows = table(text, "## Layers")
    assert rows[-1][0] == "`getitem_8`" and rows[-1][3] == "`500 x 375`"


# ---------------------------------------------------------------------------
# files that shapecalc docs did not write, and writing safely

HAND_WRITTEN = "# Our models\n\nWritten by a person; shapecalc must leave it alone.\n"
TINY_NET = (
    "import torch.nn as nn\n\n\n"
    "def README():\n"
    "    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU())\n"
)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_docs_refuses_to_overwrite_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "README.md").write_text(HAND_WRITTEN)
    (tmp_path / "fcn8s.md").write_text("my notes on FCN-8s\n")
    before = snapshot(tmp_path)
    code, out, err = run(capsys, "docs", "--out", str(tmp_path))
    assert code == 2 and out == ""
    line = err.strip()
    assert len(err.splitlines()) == 1 and "README.md" in line and "fcn8s.md" in line and "--force" in line
    assert snapshot(tmp_path) == before  # nothing written, not even deeplabv3.md


def test_a_model_page_named_like_the_index_does_not_overwrite_it(tmp_path, capsys):
    (tmp_path / "models.py").write_text(TINY_NET)
    (tmp_path / "README.md").write_text(HAND_WRITTEN)
    code, _, err = run(capsys, "docs", f"{tmp_path / 'models.py'}:README", "--out", str(tmp_path))
    assert code == 2 and "README.md" in err and len(err.splitlines()) == 1
    assert (tmp_path / "README.md").read_text() == HAND_WRITTEN


def test_force_overwrites_and_generated_pages_are_rewritten(tmp_path, capsys):
    (tmp_path / "fcn8s.md").write_text(HAND_WRITTEN)
    code, out, _ = run(capsys, "docs", "fcn8s", "--out", str(tmp_path), "--force")
    assert code == 0 and out == f"wrote {tmp_path / 'fcn8s.md'}\nwrote {tmp_path / 'fcn8s.svg'}\n"
    expected = generate(["fcn8s"])[0].text
    assert (tmp_path / "fcn8s.md").read_text() == expected
    # a page shapecalc wrote is its own to replace: no --force needed
    (tmp_path / "fcn8s.md").write_text(expected.replace("k3 p100", "k3 p99"))
    assert run(capsys, "docs", "fcn8s", "--out", str(tmp_path))[0] == 0
    assert (tmp_path / "fcn8s.md").read_text() == expected


def test_check_fails_on_a_page_that_is_not_generated(tmp_path, capsys):
    for page in generate(["fcn8s"]):
        (tmp_path / page.filename).write_text(page.text.split("\n", 1)[1])  # the marker line removed
    code, out, _ = run(capsys, "docs", "fcn8s", "--out", str(tmp_path), "--check")
    assert code == 1
    assert out.splitlines()[0] == (f"{tmp_path / 'fcn8s.md'} is not a generated page (no marker line): shapecalc "
                                   "docs would write this page there (when forced to, over the file)")


def test_a_reader_of_the_old_page_never_sees_a_partial_one(tmp_path):
    # pages are renamed into place: whoever opened the old page reads all of it
    old = generate(["fcn8s"])[0]
    stale = Page(old.filename, old.model, old.text.replace("k3 p100", "k3 p99"))
    assert stale.text != old.text
    write_pages([stale], tmp_path)
    with open(tmp_path / old.filename, encoding="utf-8") as reader:
        write_pages([old], tmp_path)
        assert reader.read() == stale.text
    assert (tmp_path / old.filename).read_text() == old.text
    assert sorted(p.name for p in tmp_path.iterdir()) == [old.filename]  # no temporary file left


def test_a_page_that_fails_leaves_every_page_as_it_was(tmp_path):
    marker = generate(["fcn8s"])[0].text.splitlines()[0]
    first, second = (Page(name, name, f"{marker}\n\nold {name}\n") for name in ("a.md", "b.md"))
    write_pages([first, second], tmp_path)
    before = snapshot(tmp_path)
    # a MODEL path with bytes that are not UTF-8 reaches Python as surrogates: b.md cannot be written
    broken = [Page("a.md", "a", f"{marker}\n\nnew a\n"), Page("b.md", "b", f"{marker}\n\nnew \udcff\n")]
    with pytest.raises(ShapecalcError, match="b.md"):
        write_pages(broken, tmp_path)
    assert snapshot(tmp_path) == before


def test_out_that_is_a_file_or_below_one(tmp_path, capsys):
    blocker = tmp_path / "sizes.md"
    blocker.write_text(HAND_WRITTEN)
    for out_dir in (blocker, blocker / "sizes"):
        for check in ((), ("--check",)):
            code, out, err = run(capsys, "docs", "fcn8s", "--out", str(out_dir), *check)
            assert code == 2 and out == "" and len(err.splitlines()) == 1, (out_dir, check, err)
            assert "internal error" not in err and f"{blocker} is a file" in err
    assert blocker.read_text() == HAND_WRITTEN


def test_out_that_is_read_only(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "sizes"
    folder.mkdir()
    code, _, _ = run(capsys, "docs", "fcn8s", "--out", str(folder))
    before = snapshot(folder)
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            # root ignores the mode: refuse new files in the folder as the kernel would for anyone else
            real_open = os.open

            def refusing(path, flags, *args, **kwargs):
                if Path(path).parent == folder and flags & os.O_CREAT:
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(os, "open", refusing)
        code, out, err = run(capsys, "docs", "fcn8s", "--out", str(folder), "--sizes", "64")
    finally:
        folder.chmod(0o755)
    assert code == 2 and out == "" and len(err.splitlines()) == 1, err
    assert "fcn8s.md" in err and "Permission denied" in err
    assert snapshot(folder) == before
