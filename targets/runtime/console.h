/* Tiny console formatting for the tvm-mcu firmware: no printf, so no heap and no stdio. */
#ifndef TVMMCU_CONSOLE_H
#define TVMMCU_CONSOLE_H

#include <stdint.h>

/* A line being built on the stack; text past the capacity is dropped. */
typedef struct {
    char text[96];
    uint32_t len;
} tvmmcu_line_t;

static inline void tvmmcu_line_str(tvmmcu_line_t *line, const char *s)
{
    while (*s != '\0' && line->len + 1u < sizeof line->text) {
        line->text[line->len++] = *s++;
    }
    line->text[line->len] = '\0';
}

static inline void tvmmcu_line_u32(tvmmcu_line_t *line, uint32_t v)
{
    char digits[10];
    uint32_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v != 0u);
    char s[11];
    for (uint32_t i = 0; i < n; ++i) {
        s[i] = digits[n - 1u - i];
    }
    s[n] = '\0';
    tvmmcu_line_str(line, s);
}

static inline void tvmmcu_line_i32(tvmmcu_line_t *line, int32_t v)
{
    if (v < 0) {
        tvmmcu_line_str(line, "-");
        /* Negate in unsigned arithmetic so INT32_MIN is printed correctly. */
        tvmmcu_line_u32(line, 0u - (uint32_t)v);
    } else {
        tvmmcu_line_u32(line, (uint32_t)v);
    }
}

static inline void tvmmcu_line_hex32(tvmmcu_line_t *line, uint32_t v)
{
    static const char hex[] = "0123456789abcdef";
    char s[11] = {'0', 'x'};
    for (uint32_t i = 0; i < 8u; ++i) {
        s[2u + i] = hex[(v >> (28u - 4u * i)) & 0xFu];
    }
    s[10] = '\0';
    tvmmcu_line_str(line, s);
}

#endif /* TVMMCU_CONSOLE_H */
