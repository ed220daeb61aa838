/*
 * test_embed.c: devmodel/embed.c: determinism, normalisation, similarity
 * of texts sharing words, and the float and base64 encoders.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "embed.h"
#include "err.h"

static double cosine(const float *a, const float *b, int n)
{
    double d = 0, na = 0, nb = 0;
    for (int i = 0; i < n; i++) {
        d += (double)a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += (double)b[i] * b[i];
    }
    return d / sqrt(na * nb);
}

static double norm(const float *a, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)a[i] * a[i];
    return sqrt(s);
}

static void test_deterministic(void **state)
{
    static float a[1536], b[1536];
    const char *t = "What is TON token?";
    assert_int_equal(rp_devmodel_embed(t, strlen(t), 1536, a), 4);
    assert_int_equal(rp_devmodel_embed(t, strlen(t), 1536, b), 4);
    assert_memory_equal(a, b, sizeof(a));
    /* Case and punctuation do not matter; stop words do not either. */
    const char *u = "ton TOKEN!!";
    rp_devmodel_embed(u, strlen(u), 1536, b);
    assert_memory_equal(a, b, sizeof(a));
}

static void test_normalised(void **state)
{
    static float v[4096];
    const char *texts[] = {"What is TON token?", "a", "", "slippage slippage slippage",
                           "Ünïcödé wörds and 123 numbers"};
    int dims[] = {1, 3, 8, 256, 1536, 4096};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
        for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++) {
            assert_true(rp_devmodel_embed(texts[i], strlen(texts[i]), dims[d], v) >= 0);
            assert_true(fabs(norm(v, dims[d]) - 1.0) < 1e-5);
        }
    /* No words: the fixed unit vector. */
    rp_devmodel_embed("?! ...", 6, 4, v);
    for (int i = 0; i < 4; i++)
        assert_true(fabs(v[i] - 0.5) < 1e-6);
    assert_int_equal(rp_devmodel_embed("x", 1, 0, v), RP_EINVAL);
    assert_int_equal(rp_devmodel_embed("x", 1, 4097, v), RP_EINVAL);
}

static void test_similarity(void **state)
{
    static float q[1536], ton[1536], slip[1536];
    const char *tq = "What is TON token?";
    const char *tt = "TON (Toncoin) is the native token of The Open Network";
    const char *ts = "Slippage is the difference between expected and executed price";
    rp_devmodel_embed(tq, strlen(tq), 1536, q);
    rp_devmodel_embed(tt, strlen(tt), 1536, ton);
    rp_devmodel_embed(ts, strlen(ts), 1536, slip);
    double near = cosine(q, ton, 1536);
    double far = cosine(q, slip, 1536);
    assert_true(near > 0.4);
    assert_true(far < 0.1);
    assert_true(near > far + 0.3);
}

static void test_tokens(void **state)
{
    assert_int_equal(rp_devmodel_count_tokens("What is TON token?", 18), 4);
    assert_int_equal(rp_devmodel_count_tokens("", 0), 1);
    assert_int_equal(rp_devmodel_count_tokens("100 TON -> USDT", 15), 3);
}

static void test_format_floats(void **state)
{
    float v[] = {0.0f, 0.5f, -0.25f, 1.0f, -1.0f, 0.123456789f, 1e-12f, -0.000001f, 2.5f};
    int n = sizeof(v) / sizeof(v[0]);
    char buf[RP_DEVMODEL_FLOATS_MAX(9) + 1];
    size_t len = rp_devmodel_format_floats(v, n, buf);
    buf[len] = '\0';
    assert_string_equal(buf, "[0,0.5,-0.25,1,-1,0.123456791,0,-0.000001,2.5]");
    /* Parsing it back gives the floats (to float precision). */
    char *p = buf + 1;
    for (int i = 0; i < n; i++) {
        float x = strtof(p, &p);
        assert_true(fabsf(x - v[i]) <= 1e-8f + fabsf(v[i]) * 1e-7f);
        p++;
    }
}

static void test_base64(void **state)
{
    static const struct {
        const char *in, *out;
    } cases[] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foobar", "Zm9vYmFy"}};
    char out[64];
    unsigned char back[64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = rp_devmodel_base64(cases[i].in, strlen(cases[i].in), out);
        out[n] = '\0';
        assert_string_equal(out, cases[i].out);
        long m = rp_devmodel_base64_decode(out, n, back, sizeof(back));
        assert_int_equal(m, (long)strlen(cases[i].in));
        assert_memory_equal(back, cases[i].in, (size_t)m);
    }
    assert_int_equal(rp_devmodel_base64_decode("Zm9", 3, back, sizeof(back)), RP_EINVAL);
    assert_int_equal(rp_devmodel_base64_decode("Z!9v", 4, back, sizeof(back)), RP_EINVAL);

    /* Float vectors: little-endian float32, then base64, round trip. */
    for (int dims = 1; dims <= 7; dims++) {
        float v[7], w[7];
        rp_devmodel_embed("TON token swap", 14, dims, v);
        char text[RP_DEVMODEL_B64_LEN(28) + 1];
        size_t n = rp_devmodel_floats_base64(v, dims, text);
        assert_int_equal(n, RP_DEVMODEL_B64_LEN(4 * dims));
        unsigned char raw[28];
        assert_int_equal(rp_devmodel_base64_decode(text, n, raw, sizeof(raw)), 4 * dims);
        for (int i = 0; i < dims; i++) {
            uint32_t u = (uint32_t)raw[4 * i] | (uint32_t)raw[4 * i + 1] << 8 |
                         (uint32_t)raw[4 * i + 2] << 16 | (uint32_t)raw[4 * i + 3] << 24;
            memcpy(&w[i], &u, 4);
        }
        assert_memory_equal(v, w, sizeof(float) * (size_t)dims);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_deterministic), cmocka_unit_test(test_normalised),
        cmocka_unit_test(test_similarity),    cmocka_unit_test(test_tokens),
        cmocka_unit_test(test_format_floats), cmocka_unit_test(test_base64),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
