// Times llama.cpp's vision encoder (clip, through libmtmd) per encoder pass, for `vidkv bench vision` comparisons.
// Written for VidKV, linked against llama.cpp 3f545bec (see make.sh for the build line); it is a measuring tool.
//
// usage: clip_bench MODEL MMPROJ IMAGE THREADS REPS
// Tokenizes "<__media__>" with the image (mtmd cuts it into its entries as llama-mtmd-cli does), warms up with one
// encode of every image chunk, then encodes each image chunk REPS times (mtmd_encode_chunk, flash attention AUTO as
// llama-mtmd-cli's default) and prints JSON: per chunk its output tokens and sample times, and the median per pass.
#include "llama.h"
#include "mtmd.h"
#include "mtmd-helper.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s MODEL MMPROJ IMAGE THREADS REPS\n", argv[0]); return 2; }
    const int threads = atoi(argv[4]), reps = atoi(argv[5]);
    llama_log_set(quiet, nullptr);
    mtmd_helper_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.vocab_only = false;
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) return 1;
    mtmd_context_params vp = mtmd_context_params_default();
    vp.use_gpu = false; vp.n_threads = threads; vp.print_timings = false; vp.warmup = true;
    mtmd_context * vctx = mtmd_init_from_file(argv[2], model, vp);
    if (!vctx) return 1;
    mtmd_helper_bitmap_wrapper image = mtmd_helper_bitmap_init_from_file(vctx, argv[3], false);
    if (!image.bitmap) return 1;
    mtmd_input_text text = { "<__media__>", 11, false, true };
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    const mtmd_bitmap * bitmaps[] = { image.bitmap };
    if (mtmd_tokenize(vctx, chunks, &text, bitmaps, 1) != 0) return 1;

    std::vector<const mtmd_input_chunk *> media;
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++)
        if (mtmd_input_chunk_get_type(mtmd_input_chunks_get(chunks, i)) == MTMD_INPUT_CHUNK_TYPE_IMAGE) media.push_back(mtmd_input_chunks_get(chunks, i));
    for (auto * c : media) mtmd_encode_chunk(vctx, c);

    std::vector<double> all;
    std::string json = "{\n  \"threads\": " + std::to_string(threads) + ",\n  \"chunks\": [";
    for (size_t k = 0; k < media.size(); k++) {
        json += k ? ",\n    " : "\n    ";
        json += "{\"tokens\": " + std::to_string(mtmd_input_chunk_get_n_tokens(media[k])) + ", \"samples_ms\": [";
        for (int r = 0; r < reps; r++) {
            auto t0 = std::chrono::steady_clock::now();
            if (mtmd_encode_chunk(vctx, media[k]) != 0) return 1;
            double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
            all.push_back(ms);
            char buf[32];
            snprintf(buf, sizeof buf, "%s%.3f", r ? ", " : "", ms);
            json += buf;
        }
        json += "]}";
    }
    std::sort(all.begin(), all.end());
    double median = all.empty() ? 0 : (all.size() % 2 ? all[all.size() / 2] : (all[all.size() / 2 - 1] + all[all.size() / 2]) / 2);
    char buf[64];
    snprintf(buf, sizeof buf, "%.3f", median);
    json += "\n  ],\n  \"ms_per_pass_median\": " + std::string(buf) + "\n}\n";
    fputs(json.c_str(), stdout);
    mtmd_input_chunks_free(chunks);
    mtmd_free(vctx);
    llama_model_free(model);
    return 0;
}
