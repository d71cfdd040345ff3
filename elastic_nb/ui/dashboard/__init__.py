"""The notebook dashboard: a live view of a Job, in two layers like tqdm.notebook or dask's widget.

* ``model.DashboardModel`` computes everything the dashboard shows from the
  Job's ``snapshot()`` and log book: plain Python, testable without a frontend.
* ``widget.Dashboard`` is the ipywidgets 8 view of that model;
  ``display`` decides what a Job shows where (widget, text, HTML).

This package is imported only when a job is displayed (``Job.show``,
``Job._repr_mimebundle_``, the magics): ``import elastic_nb`` does not load
ipywidgets.
"""

from elastic_nb.ui.dashboard.display import dashboard, in_kernel, mimebundle, show
from elastic_nb.ui.dashboard.log_view import MAX_LOG_LINES, LogView
from elastic_nb.ui.dashboard.model import DashboardModel
from elastic_nb.ui.dashboard.widget import ALL, Dashboard

__all__ = ["ALL", "MAX_LOG_LINES", "Dashboard", "DashboardModel", "LogView",
           "dashboard", "in_kernel", "mimebundle", "show"]
