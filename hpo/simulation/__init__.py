"""Room `simulation`: the replay. Curve sources (a curve table, a finished search's own curves) and
the simulator that runs the searcher and scheduler of hpo.tuning.factory over them in simulated time.

Import rule: never imports MLflow or the execution room (nothing here starts Ray or trains); from
Ray only Tune's scheduler and searcher interfaces.
"""
