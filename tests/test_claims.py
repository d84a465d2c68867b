"""qlearn.claims: verdicts follow the measurements (both ways), and predictions are read tolerantly."""

import pytest

from qlearn import claims

# Measurements as the embedded model gives them (FACTS.md), and the opposite case for each claim.
MEASURED = dict(
    int8_over_bf16_linear=0.5, int8_over_bf16_model=0.605, nf4_over_int8_linear=0.516, nf4_over_int8_model=0.68,
    gb_70b_fp16=137.95e9, gb_70b_int8=69.53e9, gb_70b_4bit=36.36e9, kv_70b_4k=1.34e9,
    ppl_bf16=14.71, ppl_4bit=18.73, ppl_tokens=4096, model_name="135M model",
    state_fields_4bit=["absmax", "shape", "code", "dtype", "blocksize", "quant_type", "offset", "state2", "nested"],
    bytes_equal_4bit=True, bytes_equal_int8=True,
    int8_classes=["Linear8bitLt", "Int8Params"], four_bit_classes=["Linear4bit", "Params4bit"],
    sqnr_normal={"nf4": 20.2, "fp4": 18.0, "int4": 17.1},
    state_nf4=6_635_520, state_nf4dq=1_685_880, model_true_nf4=116_413_056,
    err_weights=0.105, err_bf16_compute=0.106, err_bf16_only=0.004,
)
OPPOSITE = dict(int8_over_bf16_linear=0.25, nf4_over_int8_model=0.5, gb_70b_4bit=20e9, kv_70b_4k=0.5e9,
                ppl_4bit=14.8, sqnr_normal={"nf4": 17.0, "fp4": 18.0, "int4": 17.1}, state_nf4dq=7_000_000,
                err_bf16_compute=0.3, int8_classes=["Int8QaTiedParameters", "Int8Params"])


def _verdicts(measured):
    return {key: c.verdict for key, c in zip(claims.SEED_CLAIMS, claims.seed_claims(measured), strict=True)}


def test_verdicts_on_the_embedded_models_numbers():
    assert _verdicts(MEASURED) == {
        "int8_quarter": "wrong", "int4_halves": "partly", "gb_70b": "roughly holds", "ppl_1pct": "wrong",
        "zero_point_qat": "wrong", "class_names": "wrong", "nf4_best": "holds", "dq_saves": "holds",
        "bf16_compute": "partly", "consumer_70b": "wrong"}


def test_each_verdict_turns_when_its_measurement_does():
    before, after = _verdicts(MEASURED), _verdicts(MEASURED | OPPOSITE)
    assert {k for k in before if before[k] != after[k]} == set(claims.SEED_CLAIMS) - {"zero_point_qat"}
    assert _verdicts(MEASURED | {"bytes_equal_int8": False})["zero_point_qat"] == "not shown"


def test_the_measured_text_quotes_the_numbers():
    rows = claims.records(claims.seed_claims(MEASURED))
    assert [set(r) for r in rows] == [{"claim", "measured", "verdict", "lessons"}] * len(claims.SEED_CLAIMS)
    text = {k: r["measured"] for k, r in zip(claims.SEED_CLAIMS, rows, strict=True)}
    assert "+27.3%" in text["ppl_1pct"] and "Q4_0 +3.6%" in text["ppl_1pct"]
    assert "137.9 GB" in text["gb_70b"] and "36.4 GB" in text["gb_70b"]
    assert "Linear8bitLt / Int8Params" in text["class_names"]
    assert "6.64 MB -> 1.69 MB" in text["dq_saves"]
    assert "NF4+DQ 27.41" in text["nf4_best"] and "Int4 34.34" in text["nf4_best"]
    assert "37.7 GB > 32 GB" in text["consumer_70b"] and "fits 2 x 24 GB" in text["consumer_70b"]
    assert "this machine" not in text["bf16_compute"]          # the path is said only where it was read
    path = claims.seed_claims(MEASURED | {"linear4bit_path": "a fused 4-bit matmul"})[8].measured
    assert "on this machine: a fused 4-bit matmul" in path


def test_missing_measurements_say_so():
    out = claims.seed_claims({})
    assert len(out) == len(claims.SEED_CLAIMS) and {c.verdict for c in out} == {"not measured"}
    assert "int8_over_bf16_linear" in out[0].measured


@pytest.mark.parametrize("text,value", [(0.5, 0.5), (3, 3.0), ("0.5", 0.5), ("1/2", 0.5), ("50%", 0.5),
                                        ("50 %", 0.5), ("half", 0.5), ("A quarter", 0.25), ("36 GB", 36.0),
                                        ("1,024", 1024.0), ("2x", 2.0), ("-3.5e-2", -0.035)])
def test_parse_number(text, value):
    assert claims.parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize("bad,error", [("many", ValueError), ([1], TypeError), (True, TypeError)])
def test_parse_number_rejects(bad, error):
    with pytest.raises(error):
        claims.parse_number(bad)


def test_check_prediction_numbers_bools_orderings():
    assert claims.check_prediction("0.6", 0.605).ok is True
    assert claims.check_prediction(0.5, 0.605, rel_tol=0.05).ok is False
    assert claims.check_prediction("no", False).ok and not claims.check_prediction("yes", False).ok
    assert claims.check_prediction(["nf4", "FP4", "int4"], ("NF4", "FP4", "INT4")).ok
    assert claims.check_prediction("NF4 < INT4 < FP4", ("NF4", "FP4", "INT4")).ok is False
    assert claims.check_prediction("e4m3", "E4M3").ok


def test_check_prediction_reveals_nothing_before_a_prediction():
    c = claims.check_prediction(None, 0.605, explain="because of the embeddings")
    assert c.ok is None and "0.605" not in c.message and "embeddings" not in c.message
    assert claims.check_prediction(..., 0.605).ok is None


def test_check_prediction_explains_and_survives_bad_input():
    c = claims.check_prediction("0.5", 0.605, explain="the embeddings stay bf16")
    assert c.ok is False and "0.605" in c.message and "embeddings stay bf16" in c.message
    assert c._repr_markdown_() == str(c) == c.message
    bad = claims.check_prediction("lots", 0.605)
    assert bad.ok is False and "Could not read" in bad.message
    assert claims.check_prediction("maybe", True).ok is False


def test_seed_claims_rejects_a_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        claims.seed_claims([("int8_over_bf16_linear", 0.5)])


def test_check_prediction_takes_numpy_measurements():
    np = pytest.importorskip("numpy")
    assert claims.check_prediction("61", np.int64(61), rel_tol=0.0, abs_tol=0.5).ok
    assert claims.check_prediction("no", np.bool_(False)).ok
    assert claims.check_prediction(5, np.float64(5.0), rel_tol=0.0, abs_tol=0.01).ok


def test_check_prediction_lists_are_shown_with_sep():
    c = claims.check_prediction("2, 6", ["2", "6"], sep=", ")
    assert c.ok and "**2, 6**" in c.message
    assert "**NF4 < FP4**" in claims.check_prediction(["nf4", "fp4"], ["NF4", "FP4"]).message


@pytest.mark.parametrize("kwargs, said, ok", [
    (dict(rel_tol=0.0, abs_tol=0.5), "(within ±0.5)", True),             # was "(within 0%)"
    (dict(rel_tol=0.0, abs_tol=0.05, unit=" GB"), "(within ±0.05 GB)", False),
    (dict(rel_tol=0.15), "(within 15%)", True),
    (dict(rel_tol=0.01, abs_tol=0.5), "(within 1% or ±0.5)", True),    # isclose: either suffices
    (dict(rel_tol=0.0), "(exactly)", False),
])
def test_check_prediction_states_the_tolerance_it_used(kwargs, said, ok):
    c = claims.check_prediction(10.4, 10.0, **kwargs)
    assert c.ok is ok and said in c.message and "0%)" not in c.message
