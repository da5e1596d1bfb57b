"""Routing analysis: record what the routers did, then measure it.

trace.py records and stores routing traces (choices.py turns one MoE
layer's plan into the trace's per-token arrays; handmade.py builds traces by
hand for tests); routing.py, dynamics.py and drops.py compute statistics of
a trace as plain arrays; capacity.py is the eval-capacity counterfactual of
a checkpoint; replay.py routes a model by a trace (router replay, routing
drift); plots.py draws all of them.
"""
