"""distinct-n: the share of n-grams that are distinct, pooled over a corpus (Li et al., 2016).

distinct_n = |set of n-grams over all texts| / (number of n-grams over all texts), for n = 1..max_n.
Texts are token-id sequences (what the generate stage samples) or strings (split on whitespace).
A collapsing model repeats itself: its distinct-2/3 fall long before its loss says so.
"""

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of texts, each a list of token ids or a string.
    max_n: largest n (default 3).
Returns:
    distinct_1 .. distinct_{max_n} (None when the corpus has no n-gram of that size),
    ngrams_1 .. ngrams_{max_n} (total n-gram counts).
Examples:
    >>> metric = evaluate.load("pipeline/lm/metrics/distinct_n")
    >>> metric.compute(predictions=[[1, 2, 1, 2]], max_n=2)["distinct_2"]
    0.6666666666666666
"""

_CITATION = """\
@inproceedings{li2016diversity,
  title={A Diversity-Promoting Objective Function for Neural Conversation Models},
  author={Li, Jiwei and Galley, Michel and Brockett, Chris and Gao, Jianfeng and Dolan, Bill},
  booktitle={NAACL}, year={2016}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"predictions": datasets.Sequence(datasets.Value("int64"))}),
                datasets.Features({"predictions": datasets.Value("string")}),
            ],
        )

    def _compute(self, predictions, max_n=3):
        if max_n < 1:
            raise ValueError(f"distinct_n: max_n must be >= 1, got {max_n}")
        seen = [set() for _ in range(max_n)]
        totals = [0] * max_n
        for text in predictions:
            tokens = text.split() if isinstance(text, str) else list(text)
            for n in range(1, max_n + 1):
                count = len(tokens) - n + 1
                if count <= 0:
                    continue
                totals[n - 1] += count
                seen[n - 1].update(tuple(tokens[i:i + n]) for i in range(count))
        result = {}
        for n in range(1, max_n + 1):
            result[f"distinct_{n}"] = len(seen[n - 1]) / totals[n - 1] if totals[n - 1] else None
            result[f"ngrams_{n}"] = totals[n - 1]
        return result
