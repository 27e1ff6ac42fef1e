/* The built-in 5x7 pixel font of the captions and the raster plots. Owner: src/io/image.c. */
#ifndef ZL_IO_FONT5X7_H
#define ZL_IO_FONT5X7_H

#include <stdint.h>

/* Seven rows, top to bottom, bit 4 = the leftmost of five columns. Letters (lowercase draws as
 * capitals), digits, space and - . + ? % ( ) : / , _ | = ' < > * [ ] ; !; anything else as '?'. */
const uint8_t *zl_font5x7(char ch);

#endif
