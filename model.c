/* model.c -- compiles the implementation part of model.h once. */
#define DN_MODEL_IMPLEMENTATION
#include "model.h"
