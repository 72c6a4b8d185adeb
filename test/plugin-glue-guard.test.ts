// The glue rewrites that bound what the host copies out of plugin memory and what a component
// may instantiate are security checks, so they fail closed: glue this host does not understand
// is refused at prepare time rather than run with a lift or an instantiation left unguarded.
import test from 'ava';
import { patchGlue } from '../host/plugin/glue.ts';
import { glueInstantiations } from '../host/plugin/limits.ts';

test('a lift out of plugin memory in a shape the guard does not know is refused', (t) => {
  const glue = 'function instantiate() {\n  function readConfig() { var r = new Uint16Array(memory0.buffer.slice(ptr0, ptr0 + len0 * 2)); }\n}\n';
  t.throws(() => patchGlue(glue), { message: /reads plugin memory in 1 place\(s\) the host does not guard/ });
});

test('the known lifts are all rewritten to the guard', (t) => {
  const glue = [
    'function instantiate() {',
    '  const _trampoline0 = function(arg0, arg1) { var result0 = new Uint8Array(memory0.buffer.slice(ptr0, ptr0 + len0 * 1)); };',
    '  function getState() { var result1 = new Uint8Array(memory0.buffer.slice(ptr1, ptr1 + len1 * 1)); var s = TEXT_DECODER_UTF8.decode(new Uint8Array(memory0.buffer, ptr2, len2)); }',
    '}',
  ].join('\n');
  const out = patchGlue(glue);
  t.is(out.liftsGuarded, 3);
  t.regex(out.source, /_vhLift\.argBytes\(memory0, ptr0, len0\)/, 'an import argument is capped, not charged to the call');
  t.regex(out.source, /_vhLift\.resultBytes\(memory0, ptr1, len1\)/, 'a result is charged to the call');
  t.regex(out.source, /_vhLift\.string\(memory0, ptr2, len2\)/);
  t.notRegex(out.source, /memory0\.buffer/);
});

test('an instantiation the allocation plan cannot attribute is refused', (t) => {
  const ok = "const module0 = getCoreModule('a.wasm');\ninstantiateCore(module0);\ninstantiateCore(module0, {});\n";
  t.deepEqual([...glueInstantiations(ok)], [['a.wasm', 2]]);
  t.throws(() => glueInstantiations(`${ok}instantiateCore(modules[0]);\n`), { message: /3 core instantiations, 2 understood/ });
});
