"""Exact next-token probabilities of `builtin:reference-language` under the run's tokenizer.

The language (pipeline/data/reference.py) writes a document as a chain of pieces, each drawn given
only the kind of the piece before it (sentence and document lengths are geometric, so memoryless):

  document start  ->  "Word"                     (Zipf word, capitalised)
  after a word    ->  " word" (1 - q_w)·Zipf      or  "." (q_w)
  after a period  ->  " Word" (1 - q_s)·Zipf      or  EOS (q_s)

A byte-level BPE with GPT-2's pre-tokenizer splits text exactly at these pieces (" ?letters" and
"."), and tokenises each piece on its own, so a document's tokens are the concatenation of its
pieces' tokens and every token sequence the tokenizer produces from the language's text
("canonical") is one generative path. P over canonical token sequences then has exact conditionals:
P(next token | tokens so far) is a ratio of masses in a trie of each piece kind's token sequences,
and the conditionals sum to one over the vocabulary and multiply to `ReferenceLanguage.log_prob`.

Why not ratios of character-prefix probabilities: tokens overlap as strings ("ab" and "abc" both
extend a context that ends "... ab"), so those ratios do not sum to one over the vocabulary; the
trie counts each document once, under its own tokenisation.

Where a token could both continue the current piece and start the next one (not the case for
byte-level BPE here, where next pieces start with a space, a period or EOS), the state keeps every
parse with its posterior weight, so the conditionals stay exact for any tokenizer that splits at
pieces. A tokenizer that does not (a document's tokens differ from its pieces' tokens) shows up as a
test token of probability zero: `token_log_probs` then raises.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.data.reference import ReferenceLanguage
from pipeline.errors import UserError

START, AFTER_WORD, AFTER_PERIOD = 0, 1, 2  # kinds of piece slot; a piece of kind None ends the document
Node = tuple[int, ...]  # the tokens of the current piece so far
State = tuple[tuple[int, Node, float], ...]  # (slot, node, posterior weight) per possible parse


class _Trie:
    """One slot's pieces by their token sequences: mass under every prefix, pieces ending at each node."""

    def __init__(self) -> None:
        self.mass: dict[Node, float] = {}
        self.children: dict[Node, set[int]] = {}
        self.ends: dict[Node, list[tuple[float, int | None]]] = {}

    def add(self, tokens: Sequence[int], prob: float, successor: int | None) -> None:
        tokens = tuple(int(t) for t in tokens)
        if not tokens:
            raise UserError("tokenizer: a piece of the reference language encodes to no tokens")
        for k in range(len(tokens) + 1):
            self.mass[tokens[:k]] = self.mass.get(tokens[:k], 0.0) + prob
        for k in range(len(tokens)):
            self.children.setdefault(tokens[:k], set()).add(tokens[k])
        self.ends.setdefault(tokens, []).append((prob, successor))


class ReferenceTokenModel:
    """P(next token | document tokens so far) for the reference language, exactly (see module docstring)."""

    def __init__(self, language: ReferenceLanguage, encode: Callable[[list[str]], list[list[int]]], eos_id: int):
        """`encode`: texts -> token ids without special tokens, as the run's packing tokenises them."""
        self.eos_id = int(eos_id)
        words = language.words
        capitalised = [w[0].upper() + w[1:] for w in words]
        texts = capitalised + [" " + w for w in words] + ["."] + [" " + w for w in capitalised]
        encoded = encode(texts)
        n = len(words)
        start, lower, period, upper = encoded[:n], encoded[n:2 * n], encoded[2 * n], encoded[2 * n + 1:]
        q_w, q_s, zipf = language.q_words, language.q_sentences, language.word_probs
        self.tries = {START: _Trie(), AFTER_WORD: _Trie(), AFTER_PERIOD: _Trie()}
        for rank in range(n):
            self._add(START, start[rank], float(zipf[rank]), AFTER_WORD)
            self._add(AFTER_WORD, lower[rank], (1.0 - q_w) * float(zipf[rank]), AFTER_WORD)
            self._add(AFTER_PERIOD, upper[rank], (1.0 - q_s) * float(zipf[rank]), AFTER_WORD)
        self._add(AFTER_WORD, period, q_w, AFTER_PERIOD)
        self._add(AFTER_PERIOD, [self.eos_id], q_s, None)
        self._entry_cache: dict[tuple[int, Node], tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_tokenizer(cls, language: ReferenceLanguage, tokenizer) -> ReferenceTokenModel:
        """With the run's (fast) tokenizer, encoding pieces exactly as packing encodes documents."""
        from pipeline.data.packing import plain_backend

        backend = plain_backend(tokenizer)
        if tokenizer.eos_token_id is None:
            raise UserError("tokenizer: no EOS token; the reference language's documents could not end")
        return cls(language, lambda texts: [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)],
                   tokenizer.eos_token_id)

    def _add(self, slot: int, tokens: Sequence[int], prob: float, successor: int | None) -> None:
        if prob > 0.0:  # a geometric stop probability of 1 leaves no continuing pieces
            self.tries[slot].add(tokens, prob, successor)

    # ------------------------------------------------------------ states

    def start_state(self) -> State:
        return ((START, (), 1.0),)

    def next_distribution(self, state: State) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, probabilities) of every token P allows next; the probabilities sum to 1."""
        if len(state) == 1:
            return self._entry_distribution(state[0][0], state[0][1])
        merged: dict[int, float] = defaultdict(float)
        for slot, node, weight in state:
            for token, prob in zip(*self._entry_distribution(slot, node)):
                merged[int(token)] += weight * float(prob)
        ids = np.fromiter(merged, dtype=np.int64, count=len(merged))
        return ids, np.fromiter(merged.values(), dtype=np.float64, count=len(merged))

    def advance(self, state: State, token: int) -> tuple[float, State]:
        """(P(token | state), the state after it); probability 0 and an empty state if P forbids it."""
        weights: dict[tuple[int, Node], float] = defaultdict(float)
        for slot, node, weight in state:
            trie = self.tries[slot]
            scale = weight / trie.mass[node]
            child = node + (token,)
            if token in trie.children.get(node, ()):
                weights[(slot, child)] += scale * trie.mass[child]
            for prob, successor in trie.ends.get(node, ()):
                if successor is not None and token in self.tries[successor].children.get((), ()):
                    weights[(successor, (token,))] += scale * prob * self.tries[successor].mass[(token,)]
        total = sum(weights.values())
        if total <= 0.0:
            return 0.0, ()
        return total, tuple((slot, node, w / total) for (slot, node), w in weights.items())

    def _entry_distribution(self, slot: int, node: Node) -> tuple[np.ndarray, np.ndarray]:
        """Next-token distribution of one parse: continue the piece, or end it and start the next one."""
        key = (slot, node)
        if key not in self._entry_cache:
            trie = self.tries[slot]
            ids = [np.array(sorted(trie.children.get(node, ())), dtype=np.int64)]
            masses = [np.array([trie.mass[node + (t,)] for t in ids[0]], dtype=np.float64)]
            for prob, successor in trie.ends.get(node, ()):
                if successor is not None:
                    first_ids, first_masses = self._first_tokens(successor)
                    ids.append(first_ids)
                    masses.append(prob * first_masses)
            all_ids = np.concatenate(ids)
            unique, inverse = np.unique(all_ids, return_inverse=True)
            summed = np.zeros(len(unique), dtype=np.float64)
            np.add.at(summed, inverse, np.concatenate(masses))
            self._entry_cache[key] = (unique, summed / trie.mass[node])
        return self._entry_cache[key]

    def _first_tokens(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        trie = self.tries[slot]
        ids = np.array(sorted(trie.children[()]), dtype=np.int64)
        return ids, np.array([trie.mass[(t,)] for t in ids], dtype=np.float64)

    # ------------------------------------------------------------ documents

    def conditionals(self, ids: Sequence[int]) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """For a document's tokens (EOS last): ln P(x_t | x_<t) for every t, and P(· | x_<t) at every t.

        A token P forbids gets -inf (and every later position too).
        """
        log_probs = np.full(len(ids), -np.inf)
        supports = []
        state = self.start_state()
        for t, token in enumerate(ids):
            supports.append(self.next_distribution(state) if state else (np.zeros(0, np.int64), np.zeros(0)))
            if not state:
                continue
            prob, state = self.advance(state, int(token))
            if prob > 0.0:
                log_probs[t] = np.log(prob)
        return log_probs, supports

    def token_log_probs(self, documents_ids: Sequence[Sequence[int]]) -> tuple[list[np.ndarray], list[list]]:
        """`conditionals` of every document; a document P gives probability zero is a tokenizer P cannot model."""
        all_log_probs, all_supports = [], []
        for index, ids in enumerate(documents_ids):
            log_probs, supports = self.conditionals(ids)
            if not np.isfinite(log_probs).all():
                raise UserError(f"tokenizer: document {index} of the test split does not tokenise piece by piece "
                                "(word, ' word', '.'); the token-level floor needs a tokenizer that splits at "
                                "words, as the byte-level BPE does; use the document level")
            all_log_probs.append(log_probs)
            all_supports.append(supports)
        return all_log_probs, all_supports
