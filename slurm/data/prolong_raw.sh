#!/usr/bin/env bash
# Data plan: ProLong's stage-1, stage-2 and SFT datasets from raw corpora, in the layout the
# recipes/prolong/*.yaml read ($PROLONG_DATA/stage1/..., stage2/..., sft/ultrachat).
# Run by slurm/data.sbatch (the pipeline's data step). Raw inputs, under $PROLONG_RAW:
#   code_repos/   one folder per repository          books/   one .txt per book, or jsonl
#   textbooks/ fineweb_edu/ fineweb/ stackexchange/ wikipedia/ tulu_v2/ arxiv/ openwebmath/
#                 jsonl / parquet / txt (docs/data.md)
#   ultrachat/    UltraChat or ShareGPT conversations (jsonl)
# TOKENIZER: default llama3 (Llama-3-8B-Instruct's).
set -euo pipefail
: "${PROLONG_RAW:?set PROLONG_RAW (the raw corpora) in the site env file}"
: "${PROLONG_DATA:?set PROLONG_DATA (where the datasets go) in the site env file}"

prepare() {
    python3 "$MEGATRON_EXT_REPO/tools/prepare_data.py" --tokenizer "${TOKENIZER:-llama3}" \
        --workers "${SLURM_CPUS_PER_TASK:-1}" --no-progress "$@"
}
K=1024
out=$PROLONG_DATA

# Long domains: documents >= 64K for stage 1; 64K-512K (packed) and >= 512K (chunked) for stage 2.
prepare --input "$PROLONG_RAW/code_repos" --input-format code-repos \
    --output-prefix "$out/stage1/code_repos_64k" --min-tokens $((64 * K)) \
    --bucket "$out/stage2/code_repos_64k_512k:$((64 * K)):$((512 * K - 1))" \
    --bucket "$out/stage2/code_repos_512k:$((512 * K))"
prepare --input "$PROLONG_RAW/books" \
    --output-prefix "$out/stage1/books_64k" --min-tokens $((64 * K)) \
    --bucket "$out/stage2/books_64k_512k:$((64 * K)):$((512 * K - 1))" \
    --bucket "$out/stage2/books_512k:$((512 * K))"

# ShortMix: the same datasets for both stages, one tokenization.
for domain in textbooks fineweb_edu fineweb stackexchange wikipedia tulu_v2 arxiv openwebmath; do
    prepare --input "$PROLONG_RAW/$domain" --output-prefix "$out/stage1/$domain" --bucket "$out/stage2/$domain:1"
done

# SFT: whole conversations up to 64K tokens, loss on assistant turns.
prepare --input "$PROLONG_RAW/ultrachat" --chat --output-prefix "$out/sft/ultrachat" --max-tokens $((64 * K))
