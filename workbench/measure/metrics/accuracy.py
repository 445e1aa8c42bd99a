"""Accuracy: the share of predictions equal to their references.

An `evaluate` metric script shipped with the workbench, so that it loads offline
(`evaluate.load("accuracy")` fetches its script from the hub). Same inputs and
output as the hub's `accuracy`, without its scikit-learn dependency.
One import per line: `evaluate` reads this file's imports to check requirements.
"""
import datasets
import evaluate
import numpy

_DESCRIPTION = """
Accuracy is the proportion of correct predictions among all predictions:
(number of predictions equal to their reference) / (number of predictions).
With `sample_weight`, each prediction counts with its weight.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
    normalize (bool): if False, return the number (or total weight) of correct predictions. Defaults to True.
    sample_weight (list of float): weight of each prediction. Defaults to None (all 1).
Returns:
    accuracy (float): the share of correct predictions (or their count when normalize=False).
Example:
    >>> metric = workbench.measure.evaluate_metrics.load_metric("accuracy")
    >>> metric.compute(predictions=[1, 0, 1], references=[1, 1, 1])
    {'accuracy': 0.6666666666666666}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("int64"),
                    "references": datasets.Value("int64"),
                }
            ),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        correct = numpy.asarray(predictions) == numpy.asarray(references)
        weights = numpy.ones(len(correct)) if sample_weight is None else numpy.asarray(sample_weight, dtype=float)
        total = float((correct * weights).sum())
        return {"accuracy": total / float(weights.sum()) if normalize else total}
