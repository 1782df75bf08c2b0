"""The README's study snippet runs as written (on a mechanism with BatchNorm, issue 13)."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_block_after(marker: str) -> str:
    text = README.read_text()
    start = text.index(marker)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    return match.group(1)


def test_readme_study_snippet_runs_as_written():
    source = _python_block_after("**To study**")
    assert "default_params" in source and "ag.grad" in source and "trainable" in source
    namespace: dict = {}
    exec(compile(source, str(README), "exec"), namespace)  # noqa: S102 -- the README's own code
    grads, trainable, params = namespace["grads"], namespace["trainable"], namespace["params"]
    assert set(grads) == set(params)
    assert [k for k, g in grads.items() if g is None] == [k for k in params if k.endswith("num_batches_tracked")]
    assert set(trainable) < set(params) and not any("running" in k or "num_batches" in k for k in trainable)
