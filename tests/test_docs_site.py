"""The documentation site: the generated mechanism pages, their LaTeX, and `mkdocs build --strict`."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import npattn

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs" / "_hooks"))
import mechanism_pages as pages  # noqa: E402

SITE_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python", "pymdownx")


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_mkdocs = pytest.mark.skipif(not all(_has(m) for m in SITE_PACKAGES),
                                  reason="needs the docs extra (mkdocs, mkdocs-material, mkdocstrings[python])")


# ---------------------------------------------------------------------------------------------
# ASCII equations -> LaTeX


def _tex_tokens(text):
    """Control words, escaped characters, groups (as lists) and single characters; ValueError if unbalanced."""
    stack, i = [[]], 0
    while i < len(text):
        if text[i] == "\\":
            match = re.match(r"\\([A-Za-z]+|.)", text[i:])
            stack[-1].append(match.group(0))
            i += len(match.group(0))
            continue
        if text[i] == "{":
            stack.append([])
        elif text[i] == "}":
            if len(stack) == 1:
                raise ValueError(f"unbalanced '}}' in {text!r}")
            group = stack.pop()
            stack[-1].append(group)
        else:
            stack[-1].append(text[i])
        i += 1
    if len(stack) != 1:
        raise ValueError(f"unbalanced '{{' in {text!r}")
    return stack[0]


def _check_scripts(tokens, text):
    """No atom carries two subscripts or two superscripts (TeX's 'Double subscript' error)."""
    attached, i = set(), 0
    while i < len(tokens):
        token = tokens[i]
        if token in ("_", "^"):
            if token in attached:
                raise ValueError(f"double {token} in {text!r}")
            if i + 1 >= len(tokens):
                raise ValueError(f"{token} without its script in {text!r}")
            attached.add(token)
            if isinstance(tokens[i + 1], list):
                _check_scripts(tokens[i + 1], text)
            i += 2
            continue
        attached = set()
        if isinstance(token, list):
            _check_scripts(token, text)
        i += 1


def test_the_checker_refuses_bad_tex():
    for bad in ("a_{b}_{c}", "x^{2}^{3}", "{a", "a}", "a_"):
        with pytest.raises(ValueError):
            _check_scripts(_tex_tokens(bad), bad)
    _check_scripts(_tex_tokens("W_{i}{}_{j}^{T}"), "ok")


def _equation_lines():
    seen = set()
    for mech in npattn.mechanisms():
        if mech.module in seen:
            continue
        seen.add(mech.module)
        for line in pages.equation_block(pages.inspect.getdoc(sys.modules[mech.module]) or ""):
            if line.strip():
                yield mech.module, line


def test_every_equation_of_every_module_becomes_well_formed_tex():
    count = 0
    for module, line in _equation_lines():
        _, equation, _ = pages.split_line(line)
        tex = pages.latex(equation)
        _check_scripts(_tex_tokens(tex), f"{module}: {line}")
        assert "|" not in tex and "$" not in tex.replace("\\$", ""), (module, line, tex)  # tables, inline math
        count += bool(equation)
    assert count > 100  # the translator saw the registry's equations, not an empty list


def test_translations_derived_by_hand():
    assert pages.latex("s = sigmoid(W2 relu(W1 z + b1) + b2)") == (
        "s\\,=\\,\\operatorname{sigmoid}(W_{2}\\,\\operatorname{relu}(W_{1}\\,z\\,+\\,b_{1})\\,+\\,b_{2})")
    assert pages.latex("A = softmax_j(Ck^-0.5 q_i^T k_j)") == (
        "A\\,=\\,\\operatorname{softmax}_{j}(\\mathrm{Ck}^{-0.5}\\,q_{i}^{T}\\,k_{j})")
    assert pages.latex("x~ = sqrt(d) * |a|") == "\\tilde{x}\\,=\\,\\sqrt{d}\\,\\cdot \\,\\vert a\\vert "
    assert pages.latex("y = window_partition(x)") == "y\\,=\\,\\operatorname{window\\_partition}(x)"


def test_a_line_splits_into_label_equation_and_note():
    line = "Mc  = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))        MLP = W1 relu(W0 . + b0) + b1, shared   (N, C)"
    assert pages.split_line(line) == ("", "Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))",
                                      "MLP = W1 relu(W0 . + b0) + b1, shared  (N, C)")
    assert pages.split_line("Split:   U_m = relu(BN_m(conv_m(x)))            M branches")[:2] == (
        "Split:", "U_m = relu(BN_m(conv_m(x)))")
    assert pages.split_line("    no equation on this line") == ("", "", "no equation on this line")


def test_notes_stay_text():
    # "\\(" and "\\[" would open MathJax math, "|" would end the table cell, "*" and "_" would emphasise
    assert pages._cell("softmax_i(V[:, j])_i  (N, c_m | c_n, L) *x*") == (
        "softmax\\_i(V&#91;:, j&#93;)\\_i  (N, c\\_m &#124; c\\_n, L) \\*x\\*")


# ---------------------------------------------------------------------------------------------
# the other generated sections


def test_official_rows_match_names_and_patterns():
    rows = pages.official_rows()
    assert "integer division" in pages.official_markdown("fca", rows)
    assert "max of cSE and sSE" in pages.official_markdown("scse", rows)  # "`scse-max` / `scse`"
    assert "global extent" in pages.official_markdown("ge-theta-plus", rows)  # "`ge-*`"
    assert "the row of [`cbam`](cbam.md), an entry of the same module" in pages.official_markdown("cbam-channel", rows)
    assert "No row" in pages.official_markdown("ann-afnb", rows)


def test_parameter_table_lists_every_parameter_and_buffer():
    table = pages.parameter_table(npattn.get("cbam"))
    for key, value in npattn.get("cbam").default_params().items():
        assert f"| `{key}` | `{tuple(value.shape)}` |" in table
    assert "| `spatial_bn.running_var` | `(1,)` | float64 | 1 | buffer |" in table
    assert "| `spatial_bn.num_batches_tracked` | `()` | int64 | 1 | integer buffer |" in table


def test_the_example_scripts_still_write_the_pictures_the_pages_show():
    for script, files in pages.PICTURES.items():
        text = (ROOT / "examples" / script).read_text()
        for file, (names, _) in files.items():
            assert f'"{file}"' in text, (script, file)
            assert all(n in npattn.names() for n in names), names


@needs_mkdocs
def test_a_new_registry_entry_gets_a_page_and_a_nav_entry(monkeypatch):
    from mkdocs.config import load_config
    from mkdocs.structure.files import Files

    import npattn.registry as registry

    fake = npattn.Mechanism(**{**vars(npattn.get("se")), "name": "se-docs-probe"})
    monkeypatch.setitem(registry._REGISTRY, "se-docs-probe", fake)
    monkeypatch.setenv("NPATTN_DOCS_MAPS", "0")
    monkeypatch.setattr(pages, "_state", {})
    config = load_config(str(ROOT / "mkdocs.yml"))
    monkeypatch.setattr(config.plugins, "_current_plugin", None, raising=False)  # set by MkDocs during a build
    files = pages.on_files(Files([]), config)
    assert "mechanisms/se-docs-probe.md" in {f.src_uri for f in files}
    assert "[`se-docs-probe`](se-docs-probe.md)" in pages.index_page()
    nav = pages.on_config(config)["nav"]
    mechanisms = next(item["Mechanisms"] for item in nav if isinstance(item, dict) and "Mechanisms" in item)
    channel = next(section["Channel and spatial"] for section in mechanisms[1:] if "Channel and spatial" in section)
    assert {"se-docs-probe": "mechanisms/se-docs-probe.md"} in channel


# ---------------------------------------------------------------------------------------------
# the whole site


@needs_mkdocs
def test_the_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    env = {**os.environ, "NPATTN_DOCS_MAPS": "0", "NO_MKDOCS_2_WARNING": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                             "-d", str(site)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in npattn.names():
        assert (site / "mechanisms" / name / "index.html").exists(), name
    cbam = (site / "mechanisms" / "cbam" / "index.html").read_text()
    assert "CBAM: Convolutional Block Attention Module" in cbam
    assert "spatial_bn.running_var" in cbam and 'class="arithmatex"' in cbam
    assert "Not in this build" in cbam  # the picture was skipped, and the page says so
    assert 'id="npattn.hybrid.cbam.init"' in cbam  # the module's functions (mkdocstrings)
    core = (site / "api" / "core" / "index.html").read_text()
    assert 'id="autograd.functional.grad"' in core and 'id="autograd.gradcheck.gradcheck"' in core
    api = (site / "api" / "npattn" / "index.html").read_text()
    assert 'id="npattn.interop.jax.compare"' in api and 'id="npattn.golden.verify"' in api
    for name in npattn.names():  # math only in the equation column, never opened by a note's "\\("
        for cell in re.findall(r"<td>(.*?)</td>", (site / "mechanisms" / name / "index.html").read_text(), re.S):
            assert "arithmatex" not in cell or cell.startswith('<span class="arithmatex">'), (name, cell)
    for page in ("conventions", "parameter_contract", "golden", "interop_jax", "official_vs_paper", "libraries_vision"):
        assert (site / page / "index.html").exists(), page
