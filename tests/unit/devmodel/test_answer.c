/*
 * test_answer.c: devmodel/answer.c: answers built from the worker's prompt
 * sections, with and without context, and word truncation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "answer.h"

static char *answer(const char *prompt)
{
    char *a = rp_devmodel_answer(prompt, strlen(prompt));
    assert_non_null(a);
    return a;
}

static void test_with_context(void **state)
{
    char *a = answer("Context from knowledge base:\n"
                     "TON (Toncoin) is the native token of The Open Network. It was designed "
                     "for fast payments. It has many more details that are not quoted.\n"
                     "Slippage is the difference between expected and executed price.\n"
                     "\n"
                     "User's recent swaps:\n"
                     "100 TON → USDT\n"
                     "5 ETH → TON\n"
                     "1 BTC → ETH\n"
                     "\n"
                     "User question: What is TON token?\n");
    assert_string_equal(a, "Based on the knowledge base: TON (Toncoin) is the native token of "
                           "The Open Network. It was designed for fast payments. You recently "
                           "swapped 100 TON → USDT and 5 ETH → TON. (answer to: What is TON "
                           "token?)");
    free(a);
}

static void test_two_short_lines(void **state)
{
    char *a = answer("Context from knowledge base:\n- Staking locks tokens\n- Rewards vary\n\n"
                     "User's recent swaps:\n\nUser question: How does staking work?");
    assert_string_equal(a, "Based on the knowledge base: Staking locks tokens Rewards vary. "
                           "(answer to: How does staking work?)");
    free(a);
}

static void test_no_context(void **state)
{
    char *a = answer("Context from knowledge base:\n\n\nUser's recent swaps:\n100 TON → USDT\n\n"
                     "User question: Is it raining?\n");
    assert_non_null(strstr(a, "Is it raining?"));
    assert_non_null(strstr(a, "You recently swapped 100 TON → USDT."));
    assert_null(strstr(a, "Based on the knowledge base"));
    free(a);
    /* A bare question (no sections at all). */
    a = answer("Hello, who are you?");
    assert_string_equal(a, "I could not find anything about this in the knowledge base, but I "
                           "am happy to help with your question: \"Hello, who are you?\".");
    free(a);
    a = answer("");
    assert_true(strlen(a) > 10);
    free(a);
}

static void test_long_context_clipped(void **state)
{
    char prompt[2000] = "Context from knowledge base:\n";
    size_t n = strlen(prompt);
    for (int i = 0; i < 120; i++) {
        memcpy(prompt + n, "word ", 5);
        n += 5;
    }
    strcpy(prompt + n, "\n\nUser question: q");
    char *a = answer(prompt);
    assert_true(strlen(a) < 500);
    assert_non_null(strstr(a, "\xe2\x80\xa6"));
    free(a);
}

static void test_truncate_words(void **state)
{
    char s[] = "one two, three four";
    assert_int_equal(rp_devmodel_truncate_words(s, 5), 0);
    assert_string_equal(s, "one two, three four");
    assert_int_equal(rp_devmodel_truncate_words(s, 2), 1);
    assert_string_equal(s, "one two,");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_with_context),   cmocka_unit_test(test_two_short_lines),
        cmocka_unit_test(test_no_context),     cmocka_unit_test(test_long_context_clipped),
        cmocka_unit_test(test_truncate_words),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
