// The documented example, verbatim, against the local stack (make test sets
// VIBEFOLLOW_API_KEY and VIBEFOLLOW_BASE_URL; without them this test is skipped).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { VibeFollow } from '@vibefollow/sdk';

const live = Boolean(process.env.VIBEFOLLOW_API_KEY && process.env.VIBEFOLLOW_BASE_URL);

test('the documented identify example works against the service', { skip: !live && 'no local stack' }, async () => {
  // --- the example from the public docs, verbatim (its import is at the top) ---
  const vf = new VibeFollow({ apiKey: process.env.VIBEFOLLOW_API_KEY! });
  await vf.users.identify('usr_42', { email: 'jane@acme.io', name: 'Jane Doe', plan: 'trial' });
  // --- end of the example ---

  const deadline = Date.now() + 10_000;
  for (;;) {
    const user = await vf.users.get('usr_42').catch(() => undefined);
    if (user?.email === 'jane@acme.io' && user.traits.name === 'Jane Doe' && user.traits.plan === 'trial') break;
    assert.ok(Date.now() < deadline, 'usr_42 did not become visible within 10 s');
    await new Promise((r) => setTimeout(r, 50));
  }
  const found = await vf.users.findByEmail('JANE@acme.io');
  assert.ok(found.some((u) => u.external_user_id === 'usr_42'));
});

test('identifyMany against the service: accepted users become visible, refused ones are listed', { skip: !live && 'no local stack' }, async () => {
  const vf = new VibeFollow({ apiKey: process.env.VIBEFOLLOW_API_KEY! });
  const users = Array.from({ length: 1200 }, (_, i) => ({ externalUserId: `many-${i}`, traits: { plan: 'pro', seq: i } }));
  users[1100] = { externalUserId: '', traits: { plan: 'pro', seq: 1100 } };
  const result = await vf.users.identifyMany(users);
  assert.equal(result.accepted, 1199);
  assert.deepEqual(result.rejected.map((r) => [r.index, r.errors[0].field]), [[1100, 'users[100].external_user_id']]);
  // Waits on the consumer's progress, not on a time for all: every hundredth user (and
  // the last) in turn, each given 10 s from when the one before it was seen.
  const sample = [...Array.from({ length: 12 }, (_, k) => k * 100).filter((i) => i !== 1100), 1199];
  for (const i of sample) {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const user = await vf.users.get(`many-${i}`).catch(() => undefined);
      if (user?.traits.seq === i) break;
      assert.ok(Date.now() < deadline, `many-${i} did not become visible within 10 s of the one before`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
});
