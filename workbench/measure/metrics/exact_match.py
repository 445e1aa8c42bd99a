"""Exact match: the share of predicted strings equal to their references.

An `evaluate` metric script shipped with the workbench, so that it loads offline.
Same inputs and output as the hub's `exact_match` (a rate in [0, 1]).
One import per line: `evaluate` reads this file's imports to check requirements.
"""
import re
import string

import datasets
import evaluate
import numpy

_DESCRIPTION = """
Returns the rate at which the predicted strings exactly match their references,
after the optional normalizations (regexes removed, case, punctuation, numbers).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted texts.
    references (list of str): reference texts.
    regexes_to_ignore (list of str): regular expressions whose matches are removed before comparing.
    ignore_case (bool): compare in lower case. Defaults to False.
    ignore_punctuation (bool): remove string.punctuation before comparing. Defaults to False.
    ignore_numbers (bool): remove digits before comparing. Defaults to False.
Returns:
    exact_match (float): the share of exact matches, in [0, 1].
Example:
    >>> metric = workbench.measure.evaluate_metrics.load_metric("exact_match")
    >>> metric.compute(predictions=["Paris", "rome"], references=["Paris", "Rome"], ignore_case=True)
    {'exact_match': 1.0}
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string", id="sequence"),
                    "references": datasets.Value("string", id="sequence"),
                }
            ),
        )

    def _compute(
        self,
        predictions,
        references,
        regexes_to_ignore=None,
        ignore_case=False,
        ignore_punctuation=False,
        ignore_numbers=False,
    ):
        preds = numpy.asarray(predictions, dtype=object)
        refs = numpy.asarray(references, dtype=object)

        def clean(texts, pattern=None, table=None):
            out = []
            for t in texts:
                if pattern is not None:
                    t = re.sub(pattern, "", t)
                if table is not None:
                    t = t.translate(table)
                out.append(t.lower() if ignore_case else t)
            return numpy.asarray(out, dtype=object)

        for pattern in regexes_to_ignore or ():
            preds = clean(preds, pattern=pattern)
            refs = clean(refs, pattern=pattern)
        removed = (string.punctuation if ignore_punctuation else "") + (string.digits if ignore_numbers else "")
        table = str.maketrans("", "", removed) if removed else None
        preds = clean(preds, table=table)
        refs = clean(refs, table=table)
        return {"exact_match": float(numpy.mean(preds == refs)) if len(preds) else 0.0}
