"""MLflow at the edge, in one package, each module named by what it is:

* :mod:`~mmrm.tracking.tracker`: the tracker protocol the training code logs through, its
  no-op twin and the MLflow one (a leaf: the core imports only this);
* :mod:`~mmrm.tracking.runs`: a pipeline run's parent run and one child run per stage;
* :mod:`~mmrm.tracking.registry`: every trained RM a registered model version, and the
  ``@champion`` decision;
* :mod:`~mmrm.tracking.pyfunc`: a registered RM as an MLflow pyfunc model.
"""

from mmrm.tracking.tracker import MLflowTracker, NoOpTracker, Tracker, file_md5

__all__ = ["Tracker", "NoOpTracker", "MLflowTracker", "file_md5"]
