#!/usr/bin/env bash
# Copy .dev/llama (the patched dev tree) to .dev/slim without docs, model vocabularies, unused backends
# and the web page's sources (llama-server builds without its page), so it fits a remote GPU machine's
# 64 MiB transfer limit: bash scripts/make_slim_tree.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .dev/slim && mkdir -p .dev/slim
ex=(./.git ./docs ./models ./examples ./benches ./tools/server/tests ./tools/server/bench ./tools/ui/src ./tools/ui/tests)
for b in vulkan sycl webgpu opencl cann metal hexagon zdnn openvino; do ex+=("./ggml/src/ggml-$b"); done
(cd .dev/llama && tar cf - "${ex[@]/#/--exclude=}" .) | (cd .dev/slim && tar xf -)
du -sh .dev/slim
