"""Evaluation: IQA metrics, summaries, tables and plots."""
from .metrics import (
                      compute_metrics,
                      fit_logistic4,
                      format_table,
                      krcc,
                      logistic4,
                      plcc,
                      plcc_logistic,
                      rmse,
                      scatter_plot,
                      srcc,
                      summarize,
)

__all__ = ["srcc", "plcc", "krcc", "rmse", "logistic4", "fit_logistic4", "plcc_logistic", "compute_metrics",
           "summarize", "format_table", "scatter_plot"]
