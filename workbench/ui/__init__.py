"""Figures (plotly) and widgets (ipywidgets). The only package modules that import plotly or ipywidgets."""
