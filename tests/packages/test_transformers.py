"""HF transformers 5.25.0's ``LlamaAttention`` (built from a LlamaConfig, no weights) against npattn's
``mha-gqa`` with ``rope_layout="half"`` across configurations."""
import pytest

torch = pytest.importorskip("torch")
modeling_llama = pytest.importorskip("transformers.models.llama.modeling_llama")

from transformers import LlamaConfig  # noqa: E402

from npattn.interop.torch import check_module  # noqa: E402
from tests.packages.spaces import LLAMA, LLAMA_HF, NONEMPTY  # noqa: E402

pytestmark = [pytest.mark.packages, pytest.mark.torch]

THETA = 10000.0


class Llama(torch.nn.Module):
    """LlamaAttention with its rotary tables: HF's LlamaRotaryEmbedding, or (``float64_rope``) the same formula
    in float64; causal attention with the mask HF's model would pass, through ``implementation`` ("sdpa" or
    "eager")."""

    def __init__(self, dim, n_heads, n_kv_heads, head_dim, bias, float64_rope=False, implementation="sdpa"):
        super().__init__()
        self.config = LlamaConfig(hidden_size=dim, num_attention_heads=n_heads, num_key_value_heads=n_kv_heads,
                                  head_dim=head_dim, attention_bias=bias, rope_theta=THETA,
                                  attn_implementation=implementation)
        self.attn = modeling_llama.LlamaAttention(self.config, layer_idx=0)
        self.rotary, self.float64_rope = modeling_llama.LlamaRotaryEmbedding(self.config), float64_rope

    def tables(self, x, positions):
        if not self.float64_rope:
            return self.rotary(x, positions)
        d = self.config.head_dim
        freqs = positions[..., None].double() / THETA ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        angles = torch.cat((freqs, freqs), -1)
        return angles.cos(), angles.sin()

    def forward(self, x):
        length = x.shape[1]
        causal = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1).expand(x.shape[0], 1, -1, -1)
        return self.attn(x, self.tables(x, torch.arange(length)[None]), attention_mask=causal)[0]


def key_map(config):
    names = ("weight", "bias") if config["bias"] else ("weight",)
    return {f"attn.{p}_proj.{n}": f"w{p}.{n}" for p in "qkvo" for n in names if (p, n) != ("o", "bias")}


def test_agrees_with_float64_rotary_tables():
    check_module(lambda **c: Llama(**c, float64_rope=True), "mha-gqa", space=LLAMA_HF, key_map=key_map, bias=False,
                 batch=NONEMPTY)


def test_expected_an_empty_batch_is_refused():
    with pytest.raises(AssertionError) as info:
        check_module(lambda **c: Llama(**c, float64_rope=True), "mha-gqa", space=LLAMA_HF, key_map=key_map, bias=False)
    assert "input sizes {'batch': 0, 'length': 1}" in str(info.value) and "cannot reshape" in str(info.value)


def test_expected_rotary_tables_in_float32():
    with pytest.raises(AssertionError) as info:
        check_module(Llama, "mha-gqa", space=LLAMA_HF, key_map=key_map, bias=False, batch=NONEMPTY)
    assert "input sizes {'batch': 1, 'length': 2}" in str(info.value)  # position 0 rotates by 0: exact
    worst = str(info.value).split("worst: ")[1].splitlines()[0]
    assert 1e-10 < float(worst.rsplit("|diff| ", 1)[1]) < 1e-6, worst  # float32 rounding of the angles, no more


def test_expected_hidden_size_must_be_a_multiple_of_the_heads():
    with pytest.raises(AssertionError) as info:
        check_module(lambda **c: Llama(**c, float64_rope=True), "mha-gqa", space=LLAMA, key_map=key_map, bias=False,
                     batch=NONEMPTY)
    assert "config {'n_kv_heads': 1, 'n_heads': 2, 'head_dim': 2, 'dim': 1," in str(info.value)
    assert "is not a multiple of the number of attention heads" in str(info.value)


def test_expected_eager_softmax_in_float32():
    with pytest.raises(AssertionError) as info:
        check_module(lambda **c: Llama(**c, float64_rope=True, implementation="eager"), "mha-gqa", space=LLAMA_HF,
                     key_map=key_map, bias=False, batch=NONEMPTY)
    assert "input sizes {'batch': 1, 'length': 2}" in str(info.value)  # one key: softmax is exactly 1
    worst = str(info.value).split("worst: ")[1].splitlines()[0]
    assert 1e-10 < float(worst.rsplit("|diff| ", 1)[1]) < 1e-6, worst


def test_expected_attention_bias_on_the_output_projection_too():
    with pytest.raises(AssertionError) as info:
        check_module(lambda **c: Llama(**c, float64_rope=True), "mha-gqa", space=LLAMA_HF, key_map=key_map, bias=True)
    assert 'Missing key(s) in state_dict: "attn.o_proj.bias"' in str(info.value)
