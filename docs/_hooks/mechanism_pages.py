"""MkDocs hook: one page per registry entry, generated at build time (nothing to keep in sync by hand).

Each page has the entry's paper, the equations of its module docstring (rendered with MathJax; the text as
written is beside them), the parameter table from ``init`` at the default configuration, its row of
docs/official_vs_paper.md, its attention-map picture where an example draws one, and -- on the first entry
of each module -- the module's docstring (as written) and public functions (mkdocstrings).

Pictures come from running ``examples/attention_maps.py`` and ``examples/window_and_deformable_maps.py``
(~10 s; they need scikit-image and matplotlib).  ``NPATTN_DOCS_MAPS=1`` requires them, ``0`` skips them, and
unset runs them when those packages are importable.
"""
from __future__ import annotations

import fnmatch
import html
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the checkout's npattn, also when it is not installed
    sys.path.insert(0, str(ROOT))

import npattn  # noqa: E402
from npattn.params import INTEGER_BUFFERS, is_buffer  # noqa: E402

#: example script -> {picture: (mechanisms it shows, caption)}
PICTURES = {
    "attention_maps.py": {
        "itti.png": (("itti",), "The Itti-Koch-Niebur saliency map of a photograph and its first fixations "
                                "(winner-take-all with inhibition of return)."),
        "cbam.png": (("cbam",), "CBAM's spatial gate Ms on features of a photograph (seeded initialisation, "
                                "features from a fixed random conv layer: the support, not a trained choice)."),
        "nonlocal_ccnet.png": (("nonlocal", "ccnet"), "For one query pixel: the Non-local (embedded Gaussian) "
                               "attention over all positions and CCNet's criss-cross attention over its row and "
                               "column (seeded initialisation)."),
        "fca_filters.png": (("fca",), "FcaNet's 2-D DCT filters: the top-16 frequencies on a 7 x 7 grid."),
    },
    "window_and_deformable_maps.py": {
        "swin_windows.png": (("swin",), "Swin's regular and shifted windows (the cyclic shift wraps "
                             "the map) and the attention masks of the shifted windows."),
        "deformable_points.png": (("msdeform",), "Where multi-scale deformable attention samples for three "
                                  "reference points, on every level."),
    },
}

FAMILY_TITLES = {"origins": "Origins", "channel": "Channel and spatial", "hybrid": "Hybrid",
                 "self_attention": "Self-attention", "category": "Category", "temporal": "Temporal",
                 "frequency": "Frequency", "global": "Global", "higher_order": "Higher-order",
                 "transformer": "Transformer"}


# ---------------------------------------------------------------------------------------------
# equations: the module docstring's first indented block, ASCII math -> LaTeX


def equation_block(doc: str) -> list:
    """The first run of lines indented by 4+ spaces (blank lines inside it kept), dedented by 4."""
    lines, block, started = doc.splitlines(), [], False
    for line in lines:
        if line.startswith("    ") and line.strip():
            block.append(line[4:])
            started = True
        elif started and not line.strip():
            block.append("")
        elif started:
            break
    while block and not block[-1].strip():
        block.pop()
    return block


GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
         "nu", "xi", "pi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega", "Gamma", "Delta", "Theta",
         "Lambda", "Pi", "Sigma", "Phi", "Psi", "Omega"}
FUNCTIONS = {"exp", "log", "max", "min", "sin", "cos", "tanh", "sqrt"}
WORDS = {"if", "else", "where", "for", "and", "or", "in", "with", "over", "all", "the", "of", "only", "when",
         "per", "each", "then", "not", "from", "to", "by", "at", "on", "as", "is", "are", "one", "every"}
_TOKEN = re.compile(r"\s+|->|<-|<=|>=|!=|[A-Za-z][A-Za-z0-9]*(?:_[A-Za-z0-9]+)*|\d+(?:\.\d+)?|.", re.S)


def _identifier(word: str) -> str:
    """LaTeX of one identifier; ``W_q`` is W with subscript q, ``window_partition`` one upright name."""
    if "_" in word:
        base, _, sub = word.partition("_")
        if "_" not in sub and (len(base) <= 2 or len(sub) <= 2):
            return f"{_identifier(base)}_{{{_identifier(sub)}}}"
        return "\\operatorname{" + word.replace("_", "\\_") + "}"
    if word in GREEK:
        return "\\" + word
    if word == "sum":
        return "\\sum"
    if word in FUNCTIONS:
        return "\\" + word
    if word in ("log2", "log10"):
        return f"\\log_{{{word[3:]}}}"
    if word.lower() in WORDS:
        return f"\\text{{{word}}}"
    if len(word) == 1:
        return word
    if re.fullmatch(r"[A-Za-z]\d+", word):  # W1, b0: an indexed symbol
        return f"{word[0]}_{{{word[1:]}}}"
    if word.islower() and len(word) > 2:  # softmax, sigmoid, relu, ...: an operator name
        return f"\\operatorname{{{word}}}"
    return f"\\mathrm{{{word}}}"


_SPECIAL = {"{": "\\{", "}": "\\}", "%": "\\%", "#": "\\#", "&": "\\&", "$": "\\$", "\\": "\\backslash ",
            "|": "\\vert ", "*": "\\cdot ", "~": "\\sim ", "_": "\\_", "^": "\\hat{}", "`": "", "\"": "''",
            "->": "\\to ", "<-": "\\leftarrow ", "<=": "\\le ", ">=": "\\ge ", "!=": "\\ne ", "<": "\\lt ",
            ">": "\\gt ", ";": ";\\,"}


def _group(tokens: list, i: int) -> tuple[str, int]:
    """The LaTeX of the script after ``_``/``^`` at ``tokens[i]`` and the index after it."""
    if i >= len(tokens):
        return "", i
    if tokens[i] in "{(":
        closing = "}" if tokens[i] == "{" else ")"
        depth, j = 0, i
        while j < len(tokens):
            depth += tokens[j] == tokens[i]
            depth -= tokens[j] == closing
            if depth == 0:
                inner = latex_tokens(tokens[i + 1:j])
                return (inner if closing == "}" else f"({inner})"), j + 1
            j += 1
        return "", i  # unbalanced: not a script
    if tokens[i] == "-" and i + 1 < len(tokens) and re.fullmatch(r"[\w.]+", tokens[i + 1]):
        text, j = "-" + _atom(tokens[i + 1]), i + 2
        if j + 1 < len(tokens) and tokens[j] == "/" and re.fullmatch(r"[\w.]+", tokens[j + 1]):
            text, j = text + "/" + _atom(tokens[j + 1]), j + 2
        return text, j
    if re.fullmatch(r"[\w.]+", tokens[i]):
        return _atom(tokens[i]), i + 1
    return "", i


def _atom(token: str) -> str:
    return _identifier(token) if token[0].isalpha() else token


def latex_tokens(tokens: list) -> str:
    out, i, scripts = [], 0, set()  # scripts: the kinds (_ ^) already attached to the last atom
    while i < len(tokens):
        token = tokens[i]
        if token in ("_", "^") and out:
            script, j = _group(tokens, i + 1)
            if script:
                attached = token in scripts or (token == "_" and out[-1].endswith("}") and "_{" in out[-1])
                out.append(("{}" if attached else "") + f"{token}{{{script}}}")  # never a double script
                scripts = {token} if attached else scripts | {token}
                i = j
                continue
        scripts = set()
        if token == "sqrt" and i + 1 < len(tokens) and tokens[i + 1] == "(":
            argument, j = _group(tokens, i + 1)
            if argument:  # sqrt(x) -> \sqrt{x}: the parentheses were the argument's
                out.append(f"\\sqrt{{{argument[1:-1]}}}")
                i = j
                continue
        if token.isspace():
            out.append("\\," if out and i + 1 < len(tokens) else "")
        elif token[0].isalpha():
            if i + 1 < len(tokens) and tokens[i + 1] == "~":  # x~: x tilde
                out.append(f"\\tilde{{{_identifier(token)}}}")
                i += 2
                continue
            out.append(_identifier(token))
        elif token == "." and (i == 0 or tokens[i - 1].isspace()) and (i + 1 == len(tokens) or tokens[i + 1].isspace()):
            out.append("\\cdot ")  # a lone dot: a dot product, or a placeholder argument
        else:
            out.append(_SPECIAL.get(token, token))
        i += 1
    return "".join(out)


def latex(text: str) -> str:
    """LaTeX for one ASCII equation of a docstring (always valid: every special character is escaped)."""
    return latex_tokens(_TOKEN.findall(text.replace("``", "")))


def split_line(line: str) -> tuple[str, str, str]:
    """(label, equation, note) of one line of an equation block; equation "" when the line has none."""
    segments = [s for s in re.split(r"\s{2,}", line.strip()) if s]
    merged = []
    for segment in segments:  # "Mc  = ..." and "q  <- ..." are one equation split by alignment spaces
        if merged and (segment[:1] == "=" or segment.startswith("<-") or merged[-1].endswith(("=", "<-", "+", ","))):
            merged[-1] += " " + segment
        else:
            merged.append(segment)
    for i, segment in enumerate(merged):
        if re.search(r"(?<![<>!=])=(?!=)|<-", segment):
            return " ".join(merged[:i]), segment, "  ".join(merged[i + 1:])
    return "", "", "  ".join(merged)


def _cell(text: str) -> str:
    """Markdown for plain text in a table cell: shown as written (no emphasis, links or cell breaks)."""
    text = html.escape(text, quote=False)
    text = re.sub(r"([\\`*_{}])", r"\\\1", text)  # not "(" or "[": "\(" and "\[" open arithmatex's math
    return text.replace("|", "&#124;").replace("[", "&#91;").replace("]", "&#93;")


def equations_markdown(doc: str) -> str:
    block = equation_block(doc)
    if not block:
        return "The module docstring has no equation block; its text is under *Module* below.\n"
    cells = []
    for line in block:
        if line.strip():
            label, equation, note = split_line(line)
            math = f"\\({latex(equation)}\\)" if equation else ""  # LaTeX has no '|': latex() writes \vert
            cells.append((_cell(label), math, _cell(note)))
    labelled = any(label for label, _, _ in cells)  # a label column only where the docstring has labels
    rows = ["| | equation | note |", "|---|---|---|"] if labelled else ["| equation | note |", "|---|---|"]
    rows += [f"| {' | '.join(row if labelled else row[1:])} |" for row in cells]
    return ("\n".join(rows) + "\n\n??? note \"As written in the module docstring\"\n\n    ```text\n"
            + "\n".join("    " + line for line in block) + "\n    ```\n")


# ---------------------------------------------------------------------------------------------
# the other sections


def parameter_table(mech) -> str:
    params = mech.default_params()
    if not params:
        return "No parameters (`init` returns `{}`).\n"
    rows = ["| key | shape | dtype | elements | role |", "|---|---|---|---|---|"]
    trainable = 0
    for key, value in params.items():
        size = int(np.prod(value.shape))
        leaf = key.rsplit(".", 1)[-1]
        role = "integer buffer" if leaf in INTEGER_BUFFERS else "buffer" if is_buffer(key) else "parameter"
        trainable += size if role == "parameter" else 0
        rows.append(f"| `{key}` | `{tuple(value.shape)}` | {np.dtype(value.dtype).name} | {size} | {role} |")
    return "\n".join(rows) + f"\n\n{trainable} trainable elements (buffers excluded).\n"


def official_rows() -> list:
    """(name patterns, official, paper) of each row of docs/official_vs_paper.md's table."""
    rows = []
    for line in (ROOT / "docs" / "official_vs_paper.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows.append((re.findall(r"`([^`]+)`", cells[0]), cells[1], cells[2]))
    return rows


def _official_matches(name: str, rows: list) -> list:
    return [(official, paper) for patterns, official, paper in rows
            if any(fnmatch.fnmatchcase(name, p) for p in patterns)]


def official_markdown(name: str, rows: list) -> str:
    """The rows of docs/official_vs_paper.md for entry ``name`` (else those of its module's other entries)."""
    matching, source = _official_matches(name, rows), ""
    if not matching:  # a variant entry (cbam-channel, sse): its module's rows describe the same code
        module = npattn.get(name).module
        for other in (m.name for m in npattn.mechanisms() if m.module == module and m.name != name):
            matching = _official_matches(other, rows)
            if matching:
                source = f" (the row of [`{other}`]({other}.md), an entry of the same module)"
                break
    if not matching:
        return ("No row in [Official code vs paper](../official_vs_paper.md); the module documentation below says "
                "what the code follows.\n")
    lines = ["| official code (default) | paper's form / other variants (option) |", "|---|---|"]
    lines += [f"| {official} | {paper} |" for official, paper in matching]
    return "\n".join(lines) + f"\n\nFrom [Official code vs paper](../official_vs_paper.md){source}.\n"


def picture_markdown(name: str, pictures: dict, maps_note: str) -> str:
    shown = [(file, caption, script) for file, (names, caption, script) in pictures.items() if name in names]
    if shown:
        return "\n".join(f"![{caption}](img/{file})\n\n*{caption}* (`examples/{script}`)\n"
                         for file, caption, script in shown)
    drawn = any(name in names for scripts in PICTURES.values() for names, _ in scripts.values())
    if drawn:
        return f"Not in this build: {maps_note}\n"
    return "No example draws this mechanism's attention map yet.\n"


def mechanism_page(mech, first_of_module: bool, rows: list, pictures: dict, maps_note: str) -> str:
    module = sys.modules[mech.module]
    paper = mech.paper
    parts = [
        f"# `{mech.name}`\n",
        f"**{paper.title}**  \n{paper.authors}. {paper.venue} {paper.year}.\n",
        f"Family *{FAMILY_TITLES[mech.family]}* · module `{mech.module}` · `npattn.get(\"{mech.name}\")` · "
        f"config `{mech.config}` · options `{mech.options}`\n",
        "## Equations\n", equations_markdown(inspect.getdoc(module) or ""),
        "## Parameters (default configuration)\n", parameter_table(mech),
        "## Official code vs paper\n", official_markdown(mech.name, rows),
        "## Attention map\n", picture_markdown(mech.name, pictures, maps_note),
        "## Module\n",
    ]
    if first_of_module:
        parts.append(f"````text\n{inspect.getdoc(module) or ''}\n````\n")
        for function in public_functions(module):
            parts.append(f"::: {mech.module}.{function}\n    options:\n      heading_level: 3\n")
    else:
        first = next(m for m in npattn.mechanisms() if m.module == mech.module)
        parts.append(f"`{mech.module}` is documented on the page of [`{first.name}`]({first.name}.md).\n")
    return "\n".join(parts)


def public_functions(module) -> list:
    """The public functions a module defines (not those it imports), in the order of the source."""
    return [name for name, value in vars(module).items() if inspect.isfunction(value) and not name.startswith("_")
            and value.__module__ == module.__name__]


def index_page() -> str:
    lines = ["# Mechanisms\n", f"{len(npattn.names())} registry entries, in the survey's family order. Each page "
             "is generated from the registry at build time (`docs/_hooks/mechanism_pages.py`).\n"]
    for family in npattn.FAMILIES:
        entries = npattn.mechanisms(family)
        if not entries:
            continue
        lines += [f"## {FAMILY_TITLES[family]}\n", "| entry | paper |", "|---|---|"]
        lines += [f"| [`{m.name}`]({m.name}.md) | {m.paper.authors}, *{m.paper.title}*, {m.paper.venue} "
                  f"{m.paper.year} |" for m in entries]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# pictures


def _maps_mode() -> str:
    value = os.environ.get("NPATTN_DOCS_MAPS", "auto")
    if value not in ("0", "1", "auto"):
        raise ValueError(f"NPATTN_DOCS_MAPS must be 0, 1 or unset, got {value!r}")
    return value


def make_pictures(directory: pathlib.Path) -> tuple[dict, str]:
    """({picture file: (names, caption, script)}, a note for pages without one) after running the examples."""
    mode = _maps_mode()
    available = all(importlib.util.find_spec(m) is not None for m in ("skimage", "matplotlib"))
    if mode == "0" or (mode == "auto" and not available):
        why = "NPATTN_DOCS_MAPS=0" if mode == "0" else "scikit-image or matplotlib is not installed"
        return {}, (f"the pictures were skipped ({why}); `NPATTN_DOCS_MAPS=1 mkdocs build` draws them by running "
                    "the examples")
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    pictures = {}
    for script, files in PICTURES.items():
        subprocess.run([sys.executable, str(ROOT / "examples" / script), "--out", str(directory)], check=True,
                       env=env, capture_output=True, timeout=600)
        for file, (names, caption) in files.items():
            if not (directory / file).exists():
                raise FileNotFoundError(f"examples/{script} no longer writes {file}; update docs/_hooks")
            pictures[file] = (names, caption, script)
    return pictures, ""


# ---------------------------------------------------------------------------------------------
# MkDocs events

_state: dict = {}


def on_config(config):
    """Put the generated pages in the navigation, family by family."""
    nav = config["nav"]
    for i, item in enumerate(nav):
        if isinstance(item, dict) and item.get("Mechanisms") == "mechanisms/index.md":
            sections = [{FAMILY_TITLES[f]: [{m.name: f"mechanisms/{m.name}.md"} for m in npattn.mechanisms(f)]}
                        for f in npattn.FAMILIES if npattn.mechanisms(f)]
            nav[i] = {"Mechanisms": ["mechanisms/index.md", *sections]}
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    if "pictures" not in _state:
        _state["tmp"] = tempfile.TemporaryDirectory(prefix="npattn-docs-maps-")
        _state["pictures"] = make_pictures(pathlib.Path(_state["tmp"].name))
    pictures, maps_note = _state["pictures"]
    rows = official_rows()
    files.append(File.generated(config, "mechanisms/index.md", content=index_page()))
    seen_modules = set()
    for mech in npattn.mechanisms():
        first = mech.module not in seen_modules
        seen_modules.add(mech.module)
        page = mechanism_page(mech, first, rows, pictures, maps_note)
        files.append(File.generated(config, f"mechanisms/{mech.name}.md", content=page))
    for file in pictures:
        files.append(File.generated(config, f"mechanisms/img/{file}",
                                    abs_src_path=str(pathlib.Path(_state["tmp"].name) / file)))
    return files
