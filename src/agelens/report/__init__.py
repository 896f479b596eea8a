"""HTML reports with plots (the `report` extra: matplotlib, imported only when a plot is drawn).

`plots` draws small self-contained SVG plots; `eval_html` builds the `agelens eval --html`
report from them. Importing this package imports no plotting library.
"""
