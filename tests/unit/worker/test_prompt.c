/* Tests worker/prompt.c: the reference template, custom templates and their errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "prompt.h"

static void reference_template(void **state)
{
    rp_err_t err;
    rp_prompt_tmpl_t *t = rp_prompt_tmpl_new(NULL, &err);
    assert_non_null(t);
    const char *ctx[] = {"TON is the native token of The Open Network.",
                         "Jettons are tokens on TON."};
    rp_swap_t swaps[] = {{"TON", "USDT", "100"}, {"USDT", "ETH", "250.5"}};
    size_t len;
    char *s = rp_prompt_render(t, "What is TON token?", ctx, 2, swaps, 2, &len);
    assert_string_equal(s, "Context from knowledge base:\n"
                           "TON is the native token of The Open Network.\n"
                           "Jettons are tokens on TON.\n"
                           "\n"
                           "User's recent swaps:\n"
                           "100 TON \xe2\x86\x92 USDT\n"
                           "250.5 USDT \xe2\x86\x92 ETH\n"
                           "\n"
                           "User question: What is TON token?\n");
    assert_int_equal(len, strlen(s));
    free(s);
    /* No context and no swaps leave the sections empty, as the reference does. */
    s = rp_prompt_render(t, "hi", NULL, 0, NULL, 0, NULL);
    assert_string_equal(s, "Context from knowledge base:\n\n\nUser's recent swaps:\n\n\n"
                           "User question: hi\n");
    free(s);
    rp_prompt_tmpl_free(t);
}

static void custom_template(void **state)
{
    rp_err_t err;
    rp_prompt_tmpl_t *t = rp_prompt_tmpl_new("Q={{question}} C=[{{context}}] {single} {{", &err);
    assert_non_null(t);
    const char *ctx[] = {"a"};
    char *s = rp_prompt_render(t, "{{context}}", ctx, 1, NULL, 0, NULL);
    /* The question is inserted verbatim: placeholders in user text are not expanded. */
    assert_string_equal(s, "Q={{context}} C=[a] {single} {{");
    free(s);
    rp_prompt_tmpl_free(t);
}

static void template_errors(void **state)
{
    rp_err_t err;
    assert_null(rp_prompt_tmpl_new("no question here {{context}}", &err));
    assert_non_null(strstr(err.msg, "no {{question}}"));
    assert_null(rp_prompt_tmpl_new("{{question}} {{secrets}}", &err));
    assert_non_null(strstr(err.msg, "unknown placeholder {{secrets}}"));
    assert_null(rp_prompt_tmpl_load("/nonexistent/template.txt", &err));
    assert_non_null(strstr(err.msg, "/nonexistent/template.txt"));
}

static void template_from_file(void **state)
{
    char path[] = "/tmp/rp_prompt_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "Answer briefly.\n{{context}}\nQ: {{question}}";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    rp_err_t err;
    rp_prompt_tmpl_t *t = rp_prompt_tmpl_load(path, &err);
    unlink(path);
    assert_non_null(t);
    const char *ctx[] = {"x", "y"};
    char *s = rp_prompt_render(t, "why?", ctx, 2, NULL, 0, NULL);
    assert_string_equal(s, "Answer briefly.\nx\ny\nQ: why?");
    free(s);
    rp_prompt_tmpl_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reference_template),
        cmocka_unit_test(custom_template),
        cmocka_unit_test(template_errors),
        cmocka_unit_test(template_from_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
