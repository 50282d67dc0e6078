import json

import pytest

from privdl import render
from privdl.errors import FormatError


def _doc():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    return render.Document(
        "Report <&>",
        [
            render.Section(
                "Summary",
                [
                    render.Paragraph("Text with <b>markup</b>"),
                    render.Note("k-anonymized data is still personal data"),
                    render.KeyValues([("epsilon", 2.0), ("k", 5)]),
                    render.Table(["a", "b"], [[1, "x|y"], [2.5, None]]),
                    render.Figure(render.figure_png(fig), "a line"),
                ],
            )
        ],
        subtitle="sub",
    )


def test_markdown_and_html(tmp_path):
    doc = _doc()
    md = render.to_markdown(doc)
    assert md.startswith("# Report <&>") and "| epsilon | 2 |" in md and "x\\|y" in md
    html = render.to_html(doc)
    assert "<b>markup</b>" not in html and "&lt;b&gt;markup" in html  # escaped
    assert (
        "data:image/png;base64," in html and "<script" not in html and "http" not in html.split("<footer>")[0]
    )


def test_save_by_extension(tmp_path):
    doc = _doc()
    for name in ("r.json", "r.md", "r.html"):
        render.save(doc, tmp_path / name, {"b": 1, "a": [1.5]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": [1.5], "b": 1}
    with pytest.raises(FormatError):
        render.save(doc, tmp_path / "r.pdf", {})
    with pytest.raises(ValueError):
        render.dumps_json({"x": float("nan")})
