/*
 * ckt/ckt.h — the ckt library: Ed25519-authenticated peers that talk over
 * persistent circuits carrying fragments, on QUIC.
 *
 * This umbrella header includes every public topic header.  Link with
 * `pkg-config --libs libckt`.
 */
#ifndef CKT_CKT_H
#define CKT_CKT_H

#include "ckt/call.h"
#include "ckt/error.h"
#include "ckt/fragment.h"
#include "ckt/identity.h"
#include "ckt/message.h"
#include "ckt/node.h"
#include "ckt/peer.h"
#include "ckt/sim.h"

#define CKT_VERSION_MAJOR 0
#define CKT_VERSION_MINOR 1
#define CKT_VERSION_PATCH 0
#define CKT_VERSION_STRING "0.1.0"

#endif /* CKT_CKT_H */
