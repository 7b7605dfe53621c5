import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { chooseAccelerator, loadConfig } from '@warren/host-agent';

const dir = await mkdtemp(join(tmpdir(), 'wt-accel-'));
after(() => rm(dir, { recursive: true, force: true }));
const kvm = join(dir, 'kvm');
await writeFile(kvm, '');
const cpu = async (flags: string) => {
  const p = join(dir, `cpuinfo-${flags.length}`);
  await writeFile(p, `processor\t: 0\nflags\t\t: fpu ${flags}\n`);
  return p;
};

test('KVM only with a usable /dev/kvm and vmx/svm', async () => {
  assert.equal(
    (await chooseAccelerator('auto', { devKvm: kvm, cpuinfo: await cpu('vmx sse') })).accel,
    'kvm',
  );
  assert.equal((await chooseAccelerator('auto', { devKvm: kvm, cpuinfo: await cpu('svm') })).accel, 'kvm');
});

test('a /dev/kvm without hardware virtualization (nested PVM) means TCG, with the reason', async () => {
  const c = await chooseAccelerator('auto', { devKvm: kvm, cpuinfo: await cpu('sse sse2') });
  assert.equal(c.accel, 'tcg');
  assert.match(c.reason, /no vmx\/svm/);
  assert.equal(
    (await chooseAccelerator('auto', { devKvm: join(dir, 'none'), cpuinfo: await cpu('vmx') })).accel,
    'tcg',
  );
});

test('the override wins, and a forced KVM without /dev/kvm is a clear error', async () => {
  assert.equal((await chooseAccelerator('tcg', { devKvm: kvm, cpuinfo: await cpu('vmx') })).accel, 'tcg');
  assert.equal((await chooseAccelerator('kvm', { devKvm: kvm, cpuinfo: await cpu('sse') })).accel, 'kvm');
  await assert.rejects(chooseAccelerator('kvm', { devKvm: join(dir, 'none') }), { code: 'HOST_UNSUPPORTED' });
});

test('configuration is validated once with clear errors', () => {
  assert.equal(loadConfig({}).accel, 'auto');
  assert.equal(loadConfig({ WARREN_ACCEL: 'tcg', WARREN_BOOT_TIMEOUT_MS: '5000' }).bootTimeoutMs, 5000);
  assert.throws(() => loadConfig({ WARREN_ACCEL: 'xen' }), { code: 'INVALID_ARGUMENT', message: /accel/ });
  assert.throws(() => loadConfig({ WARREN_DATA_DIR: 'relative' }), {
    code: 'INVALID_ARGUMENT',
    message: /dataDir/,
  });
});
