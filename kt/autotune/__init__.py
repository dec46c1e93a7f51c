"""Autotune: runners, the tuning database, search strategies, the tune loop, artifacts and calibration.

Each part is replaceable on its own (a runner for another, a search strategy for another); the tune loop in
`tune.py` glues them, and reaches the cost model through one call (`predict`).
"""
