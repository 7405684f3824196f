"""rnnlab/plots.py: the one way a figure becomes a PNG, and a run's loss curves."""

import struct

from rnnlab.plots import plot_losses, pyplot, save_figure


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # the IHDR chunk: width, height


def test_a_figure_is_written_at_its_dpi_in_a_folder_made_for_it_and_closed(tmp_path):
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([0, 1], [1, 0])
    path = save_figure(figure, tmp_path / "new" / "line.png", dpi=50)
    assert path == tmp_path / "new" / "line.png"
    assert png_size(path) == (150, 100)
    assert figure.number not in plt.get_fignums()  # closed: a long run does not pile up figures


def test_loss_curves_of_a_run(tmp_path):
    records = [{"kind": "train", "step": s, "loss": 2.0 / s} for s in range(1, 11)] + \
              [{"kind": "eval", "step": 10, "loss": 0.3}]
    path = plot_losses(records, str(tmp_path / "loss.png"))
    assert path == tmp_path / "loss.png" and png_size(path) == (700, 400)
    assert plot_losses([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
