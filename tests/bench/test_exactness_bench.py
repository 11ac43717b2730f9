from graphattn.bench import exactness


def test_errors_report_own_and_summand_scales():
    e = exactness.errors("mixed", 1000.0, n=96)
    assert set(e) == {"out", "dq", "dk", "dv"}
    assert e["dv"]["own"] < 1e-6 and e["dq"]["summand"] < 1e-12  # computed in float64 at this scale
    assert e["dq"]["saturation"] < 1e-16  # one-hot rows: dq vanishes in exact arithmetic
    table = exactness.run(paths=("CSR",), scales=(1.0,), n=96)
    assert table.splitlines()[2].startswith("| CSR")
