// Internal to CKernels: build a function once per vector ISA and pick the best at load time. Used only on loops
// whose every element is the same IEEE operations in the same order (no contraction, no reassociation), so each
// clone gives identical bits.
#ifndef TRAINERD_CKERNELS_CLONES_H
#define TRAINERD_CKERNELS_CLONES_H

#if defined(__x86_64__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

#endif
