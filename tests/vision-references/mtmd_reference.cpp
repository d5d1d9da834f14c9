// Reference runner for VidKV's vision tests, written for VidKV and linked against llama.cpp's libllama + libmtmd
// (ngxson/llama.cpp 3f545bec, CPU). It is a tool that produces data; none of it is VidKV code.
//
// usage: mtmd_reference MODEL MMPROJ IMAGE.ppm[,IMAGE.ppm...] PROMPT N_PREDICT OUT_PREFIX
//   PROMPT: the raw prompt; "<__media__>" marks each image in order (one put first when absent, as llama-mtmd-cli does).
// writes OUT_PREFIX.json: the mtmd chunk layout (text ids, image n_tokens / n_pos / nx / ny) and the greedy run
//   (argmax, runner-up and their logit gap per step) of an f32-KV, no-flash-attention context on 2 threads;
//   OUT_PREFIX.embd.f32.bin: every image chunk's embeddings (mtmd_encode_chunk), [n_tokens][n_embd] each, in order.
#include "llama.h"
#include "mtmd.h"
#include "mtmd-helper.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

static std::vector<unsigned char> read_ppm(const char * path, int & w, int & h) {
    std::ifstream f(path, std::ios::binary);
    std::string magic; int maxval;
    f >> magic >> w >> h >> maxval;
    f.get();
    if (magic != "P6" || maxval != 255) { fprintf(stderr, "%s: not a P6 PPM with maxval 255\n", path); exit(2); }
    std::vector<unsigned char> rgb((size_t) w * h * 3);
    f.read((char *) rgb.data(), rgb.size());
    return rgb;
}

int main(int argc, char ** argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s MODEL MMPROJ IMAGE.ppm[,IMAGE.ppm...] PROMPT N_PREDICT OUT_PREFIX\n", argv[0]); return 2; }
    const char * model_path = argv[1], * mmproj_path = argv[2], * image_path = argv[3];
    std::string prompt = argv[4];
    const int n_predict = atoi(argv[5]);
    const std::string out = argv[6];

    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path, mp);
    if (!model) return 1;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 4096; cp.n_batch = 512; cp.n_ubatch = 512; cp.n_threads = 2; cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32;
    llama_context * lctx = llama_init_from_model(model, cp);
    if (!lctx) return 1;

    mtmd_context_params vp = mtmd_context_params_default();
    vp.use_gpu = false; vp.n_threads = 2; vp.print_timings = false; vp.warmup = false;
    vp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    mtmd_context * vctx = mtmd_init_from_file(mmproj_path, model, vp);
    if (!vctx) return 1;

    std::vector<mtmd_bitmap *> bitmaps;
    for (std::string paths = image_path; !paths.empty();) {
        size_t comma = paths.find(',');
        std::string path = paths.substr(0, comma);
        paths = comma == std::string::npos ? "" : paths.substr(comma + 1);
        int w, h;
        auto rgb = read_ppm(path.c_str(), w, h);
        bitmaps.push_back(mtmd_bitmap_init(w, h, rgb.data()));
    }
    if (prompt.find(mtmd_default_marker()) == std::string::npos) prompt = std::string(mtmd_default_marker()) + prompt;
    mtmd_input_text text = { prompt.c_str(), prompt.size(), true, true };
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    std::vector<const mtmd_bitmap *> inputs(bitmaps.begin(), bitmaps.end());
    if (mtmd_tokenize(vctx, chunks, &text, inputs.data(), inputs.size()) != 0) return 1;

    const int n_embd = llama_model_n_embd_inp(model);
    FILE * embd = fopen((out + ".embd.f32.bin").c_str(), "wb");
    std::string quoted;
    for (char ch : prompt) {
        if (ch == '"' || ch == '\\') { quoted += '\\'; quoted += ch; }
        else if (ch == '\n') quoted += "\\n";
        else quoted += ch;
    }
    std::string json = "{\n  \"prompt\": \"" + quoted + "\",\n  \"chunks\": [";
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks); i++) {
        const mtmd_input_chunk * c = mtmd_input_chunks_get(chunks, i);
        json += i ? ",\n    " : "\n    ";
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n; const llama_token * t = mtmd_input_chunk_get_tokens_text(c, &n);
            json += "{\"type\": \"text\", \"tokens\": [";
            for (size_t k = 0; k < n; k++) json += (k ? ", " : "") + std::to_string(t[k]);
            json += "]}";
        } else {
            const mtmd_image_tokens * it = mtmd_input_chunk_get_tokens_image(c);
            size_t n = mtmd_input_chunk_get_n_tokens(c);
            json += "{\"type\": \"image\", \"n_tokens\": " + std::to_string(n) + ", \"n_pos\": " + std::to_string(mtmd_input_chunk_get_n_pos(c)) +
                    ", \"nx\": " + std::to_string(mtmd_image_tokens_get_nx(it)) + ", \"ny\": " + std::to_string(mtmd_image_tokens_get_ny(it)) + "}";
            if (mtmd_encode_chunk(vctx, c) != 0) return 1;
            fwrite(mtmd_get_output_embd(vctx), sizeof(float), n * n_embd, embd);
        }
    }
    fclose(embd);
    json += "\n  ],\n  \"greedy\": [";

    llama_pos n_past = 0;
    if (mtmd_helper_eval_chunks(vctx, lctx, chunks, 0, 0, 512, true, &n_past) != 0) return 1;
    const llama_pos prompt_n_past = n_past;
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);
    llama_batch batch = llama_batch_init(1, 0, 1);
    for (int s = 0; s < n_predict; s++) {
        const float * logits = llama_get_logits_ith(lctx, -1);
        int best = 0, second = -1;
        for (int k = 1; k < n_vocab; k++) {
            if (logits[k] > logits[best]) { second = best; best = k; }
            else if (second < 0 || logits[k] > logits[second]) second = k;
        }
        char step[160];
        snprintf(step, sizeof step, "%s{\"token\": %d, \"second\": %d, \"gap\": %.9g}", s ? ", " : "", best, second, (double)(logits[best] - logits[second]));
        json += step;
        if (llama_vocab_is_eog(vocab, best)) break;
        batch.n_tokens = 1; batch.token[0] = best; batch.pos[0] = n_past++; batch.n_seq_id[0] = 1; batch.seq_id[0][0] = 0; batch.logits[0] = true;
        if (llama_decode(lctx, batch) != 0) return 1;
    }
    json += "],\n  \"n_past_after_prompt\": " + std::to_string(prompt_n_past) + "\n}\n";
    std::ofstream(out + ".json") << json;
    llama_batch_free(batch);
    mtmd_input_chunks_free(chunks);
    for (mtmd_bitmap * bitmap : bitmaps) mtmd_bitmap_free(bitmap);
    mtmd_free(vctx);
    llama_free(lctx);
    llama_model_free(model);
    return 0;
}
