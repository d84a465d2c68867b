"""qlearn.claims: verdicts follow the measurements (both ways). Predictions: tests/test_quiz.py."""

import pytest

from qlearn import claims

# Measurements as lesson 01 gives them on the embedded model (CPU, bitsandbytes 0.50.2, transformers 5), and the
# opposite case for each claim.
MEASURED = dict(
    kwarg_error="TypeError: LlamaForCausalLM.__init__() got an unexpected keyword argument 'load_in_8bit'",
    transformers_version="5.25.0",
    int8_classes=["Linear8bitLt", "Int8Params"], four_bit_classes=["Linear4bit", "Params4bit"],
    int8_over_bf16_linear=0.5, int8_over_bf16_model=0.605, nf4_over_int8_linear=0.516, nf4_over_int8_model=0.68,
    gb_70b_fp16=137.95e9, gb_70b_int8=69.53e9, gb_70b_4bit=36.36e9, kv_70b_4k=1.34e9,
    params_70b_counted=68_976_648_192, params_70b_estimated=68_976_648_192,
    estimate_over_measured={"bf16": 1.0, "int8": 1.0, "nf4+dq": 0.9999},
    gb_13b_int8=13.35e9, gb_13b_4bit=7.20e9, kv_13b_4k=3.36e9,
    state_fields_4bit=["absmax", "shape", "code", "dtype", "blocksize", "quant_type", "offset", "state2", "nested"],
    bytes_equal_4bit=True, bytes_equal_int8=True, scale_is_max=True, zero_point_from_min_max=True,
    codes_kept_after_forward=True, forwards_run=9,
    sqnr_normal={"nf4": 20.2, "fp4": 18.0, "int4": 17.1},
    state_nf4=6_635_520, state_nf4dq=1_685_880, model_true_nf4=116_413_056,
    err_weights=0.105, err_bf16_compute=0.106, err_bf16_only=0.004,
    ppl_bf16=14.71, ppl_4bit=18.73, ppl_tokens=4096, model_name="135M model",
    ppl_int8=14.97,
)
OPPOSITE = dict(kwarg_error="", int8_classes=["Int8QaTiedParameters", "Int8Params"], int8_over_bf16_linear=0.25,
                nf4_over_int8_model=0.5, gb_70b_4bit=20e9, kv_70b_4k=0.5e9, scale_is_max=False,
                codes_kept_after_forward=False, sqnr_normal={"nf4": 17.0, "fp4": 18.0, "int4": 17.1},
                state_nf4dq=7_000_000, err_bf16_compute=0.3, ppl_int8=14.8, ppl_4bit=14.8)

EXPECTED = {
    "load_in_8bit": "wrong", "class_names": "wrong", "int8_quarter": "wrong", "int4_halves": "partly",
    "gb_70b": "roughly holds", "consumer_70b": "partly", "zero_point_qat": "wrong", "zero_point_learned": "partly",
    "quantize_again": "wrong", "nf4_best": "holds", "dq_saves": "holds", "bf16_compute": "partly",
    "ppl_int8": "partly", "ppl_4bit": "wrong"}


def _verdicts(measured):
    return {key: c.verdict for key, c in zip(claims.SEED_CLAIMS, claims.seed_claims(measured), strict=True)}


def test_verdicts_on_the_embedded_models_numbers():
    assert _verdicts(MEASURED) == EXPECTED


def test_each_verdict_turns_when_its_measurement_does():
    before, after = _verdicts(MEASURED), _verdicts(MEASURED | OPPOSITE)
    assert {k for k in before if before[k] != after[k]} == set(claims.SEED_CLAIMS) - {"zero_point_qat"}
    assert after["consumer_70b"] == "holds" and after["ppl_int8"] == after["ppl_4bit"] == "holds"
    assert _verdicts(MEASURED | {"bytes_equal_int8": False})["zero_point_qat"] == "not shown"


def test_a_failed_cross_check_withholds_the_70b_verdict():
    """The 70B bytes are only as good as the estimator: a parameter count or an estimate of this run's model
    that disagrees turns the row into "not shown"."""
    assert _verdicts(MEASURED | {"params_70b_counted": 68_000_000_000})["gb_70b"] == "not shown"
    assert _verdicts(MEASURED | {"estimate_over_measured": {"bf16": 1.0, "int8": 1.05}})["gb_70b"] == "not shown"


def test_consumer_hardware_names_what_fits_where():
    text = claims.records(claims.seed_claims(MEASURED))[list(claims.SEED_CLAIMS).index("consumer_70b")]["measured"]
    assert "37.7 GB" in text and "fits two RTX 4090 and a 64 GB unified-memory machine" in text
    assert "> 32 GB, the largest single consumer GPU" in text
    # the T4: 14.73 GiB = 15.8 GB usable; 13B int8 + 4k cache = 16.7 GB does not fit, nf4+dq 10.6 GB does
    assert "T4 (15.8 GB usable)" in text and "int8 16.7 GB does not fit" in text and "nf4+dq 10.6 GB fits" in text
    too_big = _verdicts(MEASURED | {"gb_70b_4bit": 70e9})["consumer_70b"]
    assert too_big == "wrong"


def test_the_measured_text_quotes_the_numbers():
    rows = claims.records(claims.seed_claims(MEASURED))
    assert [set(r) for r in rows] == [{"claim", "measured", "verdict", "lessons"}] * len(claims.SEED_CLAIMS)
    text = {k: r["measured"] for k, r in zip(claims.SEED_CLAIMS, rows, strict=True)}
    assert "unexpected keyword argument 'load_in_8bit'" in text["load_in_8bit"] and "#41287" in text["load_in_8bit"]
    assert "+27.3%" in text["ppl_4bit"] and "Q4_0 +3.6%" in text["ppl_4bit"]
    assert "+1.8%" in text["ppl_int8"] and "125M +0.7%" in text["ppl_int8"] and "13B +0.0%" in text["ppl_int8"]
    assert "68.98 B parameters counted (= the estimator's 68.98 B)" in text["gb_70b"]
    assert "137.9 GB" in text["gb_70b"] and "36.4 GB" in text["gb_70b"] and "nf4+dq 1.000" in text["gb_70b"]
    assert "Linear8bitLt / Int8Params" in text["class_names"]
    assert "6.64 MB -> 1.69 MB" in text["dq_saves"] and "6.64 MB -> uint8" in text["quantize_again"]
    assert "after 9 forward passes == the codes loaded: True" in text["quantize_again"]
    assert "NF4+DQ 27.41" in text["nf4_best"] and "Int4 34.34" in text["nf4_best"]
    assert "this machine" not in text["bf16_compute"]          # the path is said only where it was read
    path = claims.seed_claims(MEASURED | {"linear4bit_path": "a fused 4-bit matmul"})
    assert "on this machine: a fused 4-bit matmul" in path[list(claims.SEED_CLAIMS).index("bf16_compute")].measured


def test_int8_is_judged_on_the_tokens_it_was_scored_on():
    """Where int8 was scored on fewer tokens, its own bf16 baseline on those tokens is the reference."""
    c = claims.seed_claims(MEASURED | {"ppl_bf16_int8": 14.90, "ppl_int8_tokens": 1024})
    row = c[list(claims.SEED_CLAIMS).index("ppl_int8")]
    assert "bf16 14.90 -> int8 14.97 (+0.5%, 1024 tokens)" in row.measured and row.verdict == "holds"


def test_missing_measurements_say_so():
    out = claims.seed_claims({})
    assert len(out) == len(claims.SEED_CLAIMS) and {c.verdict for c in out} == {"not measured"}
    assert "kwarg_error" in out[0].measured


def test_seed_claims_rejects_a_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        claims.seed_claims([("int8_over_bf16_linear", 0.5)])
