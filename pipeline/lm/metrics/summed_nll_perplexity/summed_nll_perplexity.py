"""Perplexity and bits per byte from SUMMED token negative log-likelihoods.

Each input row is one chunk of evaluated text (a batch, a shard, a document): the sum of the natural-log
NLL of every predicted token in it, how many tokens were predicted, and how many bytes of text those
tokens stand for. The result pools every token:

    loss = sum(nll) / sum(tokens)          nats per token
    perplexity = exp(loss)
    bits_per_byte = sum(nll) / ln 2 / sum(bytes)

This differs from the hub's `perplexity` metric, which averages per-text perplexities (long and short
texts weigh the same) and needs a model download; here the caller runs the model and passes sums.
"""

import math

import datasets
import evaluate

_DESCRIPTION = __doc__

_KWARGS_DESCRIPTION = """
Args:
    nll_sums: list of float, summed NLL in nats of the predicted tokens of each chunk.
    token_counts: list of int, predicted tokens in each chunk.
    byte_counts: list of int, UTF-8 bytes of those tokens (0 allowed when bits per byte is not wanted).
Returns:
    loss (nats/token), perplexity, bits_per_token, bits_per_byte (None when there are no bytes),
    nll_sum, tokens, bytes.
Examples:
    >>> metric = evaluate.load("pipeline/lm/metrics/summed_nll_perplexity")
    >>> metric.compute(nll_sums=[6.0, 2.0], token_counts=[3, 1], byte_counts=[9, 3])["loss"]
    2.0
"""

_CITATION = ""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class SummedNllPerplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "nll_sums": datasets.Value("float64"),
                "token_counts": datasets.Value("int64"),
                "byte_counts": datasets.Value("int64"),
            }),
        )

    def _compute(self, nll_sums, token_counts, byte_counts):
        nll = math.fsum(float(x) for x in nll_sums)
        tokens = int(sum(token_counts))
        n_bytes = int(sum(byte_counts))
        if tokens <= 0:
            raise ValueError("summed_nll_perplexity: no predicted tokens (token_counts sum to 0)")
        loss = nll / tokens
        return {
            "loss": loss,
            "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2),
            "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes > 0 else None,
            "nll_sum": nll,
            "tokens": tokens,
            "bytes": n_bytes,
        }
