"""The one table printer (rnnlab/tables.py) and the typed results that give it their tables."""

import pytest

from rnnlab.gradient_flow import CellFlow, GradientFlow, GradientFlowConfig
from rnnlab.ladder import Ladder, LadderRow
from rnnlab.tables import Table, markdown


def test_markdown_aligns_numeric_columns_right():
    table = Table(("cell", "loss"), (("lstm", "0.1"), ("gru", "0.2")), (False, True))
    assert markdown(table) == "| cell | loss |\n| --- | ---: |\n| lstm | 0.1 |\n| gru | 0.2 |"
    assert markdown(Table(("a",), ())) == "| a |\n| --- |"


def test_a_table_refuses_ragged_rows():
    with pytest.raises(ValueError, match="Table: every row must have 2 cells; got 1"):
        Table(("a", "b"), (("x",),))
    with pytest.raises(ValueError, match="Table: numeric must have one flag per column"):
        Table(("a", "b"), (), (True,))


def test_gradient_and_ladder_results_print_the_tables_they_printed_before():
    config = GradientFlowConfig(cells=("gru",), T=4, steps=3)
    flow = GradientFlow(config, [CellFlow("gru", [1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 2.0], 0.5, 0.25)])
    assert markdown(flow.table()).splitlines() == [
        "| cell | moment | MSE | t=1 | t=2 | t=3 | t=4 | t=1 / t=T |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| gru | init | 0.500 | 1.0e+00 | 2.0e+00 | 3.0e+00 | 4.0e+00 | 2.5e-01 |",
        "| gru | after 3 | 0.250 | 1.0e+00 | 1.0e+00 | 1.0e+00 | 2.0e+00 | 5.0e-01 |"]
    assert flow.to_dict()["cells"][0]["loss_init"] == 0.5 and flow.to_dict()["config"]["T"] == 4
    ladder = Ladder("adding", [LadderRow("lstm", 8, 1234, 0.1, 0.05, 0.167, 0.5, "steps", 10, extra={"acc": 0.9})])
    assert markdown(ladder.table()).splitlines() == [
        "| cell | hidden | params | steps | final loss | best loss | baseline | acc | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| lstm | 8 | 1,234 | 10 | 0.1000 | 0.0500 | 0.1670 | 0.900 | 0.5 |"]
