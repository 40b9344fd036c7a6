# User-facing targets: `make demo` (the main job), `make test` and `make mutation` (docs/testing.md).
# All create .venv on first use.
PY      ?= python3
TORCH   ?= torch==2.13.0
VENV    := .venv
STAMP   := $(VENV)/.installed-stamp

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "$(TORCH)"
	$(VENV)/bin/pip install -q -e ".[test]"
	touch $(STAMP)

.PHONY: install demo test mutation
install: $(STAMP)

# The main job: the CPU demo search. Each run gets its own name, so `make demo` can be repeated.
demo: $(STAMP)
	$(VENV)/bin/python -m hpo.search search_spaces/demo.yaml --name demo-$$(date +%Y%m%d-%H%M%S)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests

# Mutation testing of the modules whose numbers users rely on, on the fast tests ([tool.mutmut] in
# pyproject.toml); ~30 min on a shared 2-core box (docs/testing.md). Not part of `make test`. Fresh each time (rm -rf mutants).
MUTANTS := 'hpo.tuning.rung_check.*' 'hpo.tuning.priors.*' 'hpo.training.schedules.*' 'hpo.results.ledger.*' \
	'datasets.metrics.*' 'datasets.inference.*' \
	'hpo.results.handle.*leaderboard__mutmut_*' 'hpo.results.handle.*best_value__mutmut_*' \
	'hpo.trials.x_trial_status__mutmut_*' \
	'hpo.simulation.curves.*snap__mutmut_*' 'hpo.simulation.curves.*quality__mutmut_*' \
	'hpo.simulation.simulator.*regret_at__mutmut_*' 'hpo.simulation.simulator.*epochs_to__mutmut_*' \
	'hpo.simulation.simulator.x_expected_epochs_per_trial__mutmut_*' \
	'hpo.simulation.curves.*CurveSource*__post_init____mutmut_*' \
	'hpo.tuning.space.x_optuna_distributions__mutmut_*' 'hpo.tuning.space.x_encoded_points__mutmut_*' \
	'hpo.tuning.space.x_rung_milestones__mutmut_*' 'hpo.tuning.space.x_max_reports__mutmut_*' \
	'hpo.tuning.space.x_base_sampler__mutmut_*' 'hpo.tuning.space.x_make_sampler__mutmut_*'

mutation: $(STAMP)
	$(VENV)/bin/pip install -q -e ".[test,mutation]"
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 $(MUTANTS) > mutants.log 2>&1 || (tail -40 mutants.log; exit 1)
	$(VENV)/bin/python tests/mutation_score.py
