"""The paper report: claims and their computed verdicts (claims.py), the static HTML report (html.py).

`python -m mnist1d_lab.paper` runs the experiments and calls these; both read only collected tables.
"""
