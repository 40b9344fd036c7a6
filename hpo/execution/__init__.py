"""Room `execution`: the Ray side. The search runner (open / build the Tuner / finish), the
trainables (a trial in its own process, or driving a Ray Train data-parallel run), placement and
resources, promotion on Tune, and what the driver prints.

Import rule: may import every other room; nothing outside the commands imports it.
"""
