/* ref_real.h -- included first by each ref .c file: picks the precision this compile of the file
 * builds (-DREF_F64 gives the double variants, named *_f64) and declares the API. */
#ifndef DELTANET_REF_REAL_H
#define DELTANET_REF_REAL_H
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "reference.h"
#ifdef REF_F64
typedef double real;
#define RF(name) name##_f64
#else
typedef float real;
#define RF(name) name
#endif
#endif
