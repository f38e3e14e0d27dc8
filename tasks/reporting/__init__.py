"""What stages report: logging (`log`), progress of long loops (`progress`: a bar on a terminal, log
lines elsewhere), timings, sample grids (`grid`) and model cards (`model_card`); and what a run
reports at its end (`scorecard`: each stage's headline figure against its target)."""
