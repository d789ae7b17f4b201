"""Data side of the pipeline: pure functions from sources to packed blocks and mixtures.

sources     load_documents(source, ...) for hf:, files:, builtin:wikipedia, builtin:reference-language
reference   ReferenceLanguage: a generated language with exact log-probabilities
splits      deduplicate, split_documents
tokenizer   train_bpe_tokenizer, load_run_tokenizer, load_pretrained_tokenizer, token_byte_lengths
packing     pack_documents, load_blocks
mixing      block_counts, plan_mixture, mixture_indices, write_mixture
"""
