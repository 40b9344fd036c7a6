"""Room `tuning`: what decides. The space file (schema, checks before Ray starts, Optuna
distributions and samplers), knob priors, the searcher over Optuna's ask/tell, the schedulers
(calibrated early stopping and its statistics, the rung check) and the stop rules, and the factory
that builds the searcher and scheduler for both the real search and the replay. Runs on the driver.

Import rule: never imports MLflow, nor the execution, simulation, results or tracking rooms; from
Ray only Tune's searcher, scheduler, stopper and callback interfaces.
"""
